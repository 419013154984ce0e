//! Helpers shared by the integration tests that read back what the test endpoint stored.

use kusto_devserver::Server;

/// The `"seq":N` of a stored record.
#[allow(dead_code)]
pub fn seq_of(record: &[u8]) -> Option<u64> {
    let key = b"\"seq\":";
    let at = record.windows(key.len()).position(|w| w == key)? + key.len();
    let digits: Vec<u8> = record[at..]
        .iter()
        .copied()
        .take_while(u8::is_ascii_digit)
        .collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

/// The sequence numbers of every record stored for a table, in arrival order, duplicates included.
#[allow(dead_code)]
pub fn seqs(server: &Server, db: &str, table: &str) -> Vec<u64> {
    server
        .records(db, table)
        .iter()
        .map(|r| {
            seq_of(r).unwrap_or_else(|| {
                panic!("stored record without seq: {}", String::from_utf8_lossy(r))
            })
        })
        .collect()
}

/// Appends a record the way a firmware loop does: on `QueueFull`, poll (which sends, or spools) and append
/// again. When the lane is still full after a poll that failed for another reason than spooling (the spool is
/// full, the flash fails, the destination backs off without a spool), that failure is what the caller gets: the
/// record was not taken because of it. Gives up after 10,000 polls.
#[allow(dead_code)]
pub fn append(
    client: &kusto_edge_core::Client,
    destination: u32,
    record: &[u8],
) -> Result<(), kusto_edge_core::Error> {
    use kusto_edge_core::ErrorKind;
    let mut last_poll: Option<kusto_edge_core::Error> = None;
    for _ in 0..10_000 {
        match client.append(destination, record) {
            Err(e) if e.kind == ErrorKind::QueueFull => {
                if let Some(p) = last_poll.take() {
                    return Err(p);
                }
                match client.poll() {
                    Err(p) if p.kind != ErrorKind::Spooled => last_poll = Some(p),
                    _ => {}
                }
            }
            r => return r,
        }
    }
    client.append(destination, record)
}

/// A client on a manual clock (time passes when the test says so) and, when given, the spool on `storage`.
#[allow(dead_code)]
pub fn clocked(
    cfg: &kusto_edge_core::Config,
    storage: Option<kusto_edge_core::client::SpoolStorage>,
) -> (
    kusto_edge_core::Client,
    std::sync::Arc<kusto_edge_core::clock::ManualClock>,
) {
    let clock = kusto_edge_core::clock::ManualClock::new();
    let client = kusto_edge_core::Client::with_options(
        cfg,
        kusto_edge_core::ClientOptions {
            storage,
            clock: Some(clock.clone()),
            ..Default::default()
        },
    )
    .expect("client");
    (client, clock)
}
