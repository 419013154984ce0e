//! Helpers shared by the integration tests that read back what the test endpoint stored.

use kusto_devserver::Server;

/// The `"seq":N` of a stored record.
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
