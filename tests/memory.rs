//! Memory is decided when a client is created: a counting allocator measures the heap the client's thread holds
//! while it streams 100 MB over HTTPS, and checks it against `Config::memory_bound` and against itself at 10 MB.

mod common;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use kusto_devserver::{Server, ServerConfig};
use kusto_edge_core::{Client, Config};

/// Counts the bytes held by allocations made on threads that opted in (the client's), so the in-process test
/// endpoint's own storage does not count.
struct Counting;

thread_local! {
    static TRACK: Cell<bool> = const { Cell::new(false) };
    static CURRENT: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn note(delta: isize) {
    // try_with: the allocator may run while thread-locals are being torn down.
    let _ = TRACK.try_with(|t| {
        if t.get() {
            let _ = CURRENT.try_with(|c| {
                let now = c.get() + delta;
                c.set(now);
                let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
            });
        }
    });
}

// SAFETY: every method passes its arguments on to the system allocator unchanged, so this allocator keeps the
// system allocator's contract; counting touches only thread-local cells and does not allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        note(l.size() as isize);
        // SAFETY: the caller's layout, as GlobalAlloc::alloc requires it.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        note(-(l.size() as isize));
        // SAFETY: `p` came from this allocator, i.e. from System, with layout `l`.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        note(new as isize - l.size() as isize);
        // SAFETY: as dealloc, and `new` is the caller's valid new size.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn start_tracking() {
    TRACK.with(|t| t.set(true));
    CURRENT.with(|c| c.set(0));
    PEAK.with(|p| p.set(0));
}

fn peak() -> usize {
    PEAK.with(|p| p.get()) as usize
}

fn current() -> isize {
    CURRENT.with(|c| c.get())
}

#[test]
fn compressor_state_fits_its_documented_allowance() {
    start_tracking();
    let g = kusto_edge_core::gzip::Gzip::new(3);
    let held = current() as usize;
    drop(g);
    eprintln!("compressor holds {held} bytes");
    assert!(
        held <= kusto_edge_core::gzip::COMPRESSOR_STATE_BYTES,
        "compressor holds {held} bytes"
    );
    assert!(
        held > kusto_edge_core::gzip::COMPRESSOR_STATE_BYTES / 2,
        "allowance far too generous: {held}"
    );
}

#[test]
fn heap_of_a_client_streaming_100_mb_stays_within_its_bound_and_does_not_grow() {
    let server = Server::start(ServerConfig {
        tls: true,
        ..Default::default()
    })
    .unwrap();
    let mut cfg = Config::default();
    cfg.set("url", &server.url()).unwrap();
    cfg.add_ca_pem(server.ca_pem().unwrap().as_bytes()).unwrap();
    cfg.set("tls.bundled_roots", "false").unwrap();
    cfg.set("destinations.max", "2").unwrap();
    cfg.set("batch.bytes", "1048576").unwrap();
    let bound = cfg.memory_bound() as usize;

    start_tracking();
    let client = Client::new(&cfg, None, None).unwrap();
    let a = client.add_destination("db", "a", "csv", None).unwrap();
    let b = client.add_destination("db", "b", "csv", None).unwrap();
    let mut line = String::with_capacity(256);
    let mut sent = 0usize;
    let mut peak_at_10mb = 0;
    let mut seq = 0u64;
    while sent < 100 << 20 {
        line.clear();
        use std::fmt::Write;
        write!(
            line,
            "{seq},gw-{},{}.{},sensor reading with some text {}",
            seq % 13,
            seq % 90,
            seq % 10,
            seq * 7919
        )
        .unwrap();
        common::append(
            &client,
            if seq.is_multiple_of(3) { a } else { b },
            line.as_bytes(),
        )
        .unwrap();
        sent += line.len() + 1;
        seq += 1;
        if peak_at_10mb == 0 && sent >= 10 << 20 {
            peak_at_10mb = peak();
        }
        if seq.is_multiple_of(100_000) {
            // The endpoint stores what it receives: forget it, this test is about the client.
            server.reset();
        }
    }
    client.flush().unwrap();
    let peak_at_100mb = peak();
    TRACK.with(|t| t.set(false));
    let acked = client.stats().records_acknowledged;
    assert_eq!(acked, seq);
    eprintln!(
        "memory: bound {bound} B, peak at 10 MB {peak_at_10mb} B, at 100 MB {peak_at_100mb} B"
    );
    assert!(
        peak_at_100mb <= bound,
        "peak {peak_at_100mb} exceeds the computed bound {bound}"
    );
    assert!(
        peak_at_100mb <= peak_at_10mb + 64 * 1024,
        "heap grew with input: {peak_at_10mb} at 10 MB, {peak_at_100mb} at 100 MB"
    );
    drop(client);
}

#[test]
fn heap_stays_within_the_bound_while_a_50_mb_outage_goes_to_the_spool_and_drains() {
    let server = Server::start(ServerConfig::default()).unwrap();
    let dir = std::env::temp_dir().join(format!("kedge-memory-spool-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut cfg = Config::default();
    cfg.set("url", &server.url()).unwrap();
    cfg.set("http.allow_plain", "true").unwrap();
    cfg.set("destinations.max", "1").unwrap();
    cfg.set("batch.bytes", "262144").unwrap();
    cfg.set("spool.dir", dir.to_str().unwrap()).unwrap();
    cfg.set("spool.max_bytes", &(64u64 << 20).to_string())
        .unwrap();
    cfg.set("spool.max_chunks", "1000").unwrap();
    cfg.set("retry.max_attempts", "1").unwrap();
    cfg.set("spool.replay_per_poll", "1000").unwrap();
    let bound = cfg.memory_bound() as usize;

    server.set_down(std::time::Duration::from_secs(3600));
    start_tracking();
    let client = Client::new(&cfg, None, None).unwrap();
    let d = client.add_destination("db", "t", "csv", None).unwrap();
    let mut raw = 0usize;
    let mut seq = 0u64;
    let mut line = String::new();
    while raw < 50 << 20 {
        use std::fmt::Write;
        line.clear();
        write!(
            line,
            "{seq},gw-{},{}.{},outage reading {}",
            seq % 13,
            seq % 90,
            seq % 10,
            seq * 104729
        )
        .unwrap();
        common::append(&client, d, line.as_bytes()).unwrap();
        raw += line.len() + 1;
        seq += 1;
    }
    client.flush_to_spool().unwrap();
    let during = peak();
    let spooled = client.stats().bytes_spooled as usize;
    server.set_down(std::time::Duration::ZERO);
    while client.stats().spool_chunks > 0 {
        let _ = client.poll();
    }
    let after = peak();
    TRACK.with(|t| t.set(false));
    let s = client.stats();
    eprintln!("outage: bound {bound} B, peak during {during} B, after drain {after} B; {raw} B raw went to flash as {spooled} B");
    assert_eq!(s.records_replayed, seq, "everything drained");
    assert!(
        after <= bound,
        "peak {after} exceeds the computed bound {bound}"
    );
    assert!(
        spooled * 3 < raw,
        "flash got the compressed size: {spooled} B for {raw} B raw"
    );
    drop(client);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn heap_stays_within_the_bound_with_a_credential_that_refreshes_its_token() {
    let server = Server::start(ServerConfig {
        tls: true,
        auth: Some(kusto_devserver::AuthConfig {
            token_lifetime: std::time::Duration::from_secs(2),
            ..Default::default()
        }),
        ..Default::default()
    })
    .unwrap();
    server.register_secret_client("app-1", "memory-secret");
    let mut cfg = Config::default();
    cfg.set("url", &server.url()).unwrap();
    cfg.add_ca_pem(server.ca_pem().unwrap().as_bytes()).unwrap();
    cfg.set("tls.bundled_roots", "false").unwrap();
    for (k, v) in [
        ("auth.tenant", "test-tenant"),
        ("auth.client_id", "app-1"),
        ("auth.client_secret", "memory-secret"),
        ("auth.authority_host", &server.url()),
        ("proxy.url", "none"),
        ("destinations.max", "1"),
        ("batch.bytes", "262144"),
    ] {
        cfg.set(k, v).unwrap();
    }
    let bound = cfg.memory_bound() as usize;
    start_tracking();
    let client = Client::new(&cfg, None, None).unwrap();
    let d = client.add_destination("db", "t", "csv", None).unwrap();
    let started = std::time::Instant::now();
    let mut seq = 0u64;
    while started.elapsed() < std::time::Duration::from_secs(5) {
        let line = format!("{seq},gw,{}.{},authenticated reading", seq % 90, seq % 10);
        common::append(&client, d, line.as_bytes()).unwrap();
        seq += 1;
        if seq.is_multiple_of(20_000) {
            client.flush().unwrap();
            server.reset();
        }
    }
    client.flush().unwrap();
    let peak = peak();
    TRACK.with(|t| t.set(false));
    let fetches = server.auth_stats().secret_requests;
    eprintln!("auth: bound {bound} B, peak {peak} B, {fetches} token fetches, {seq} records");
    assert!(fetches >= 2, "the token was refreshed during the run");
    assert!(
        peak <= bound,
        "peak {peak} exceeds the computed bound {bound}"
    );
    drop(client);
}

/// Queued (with every DM report asked for, so the table of chunks awaiting a word fills) and managed (streaming,
/// then a table whose streaming is off so that chunks fall back to the queue) hold no more than the bound says,
/// and no more at the end of the run than early on (a tenth of the way in; managed: once both sinks have worked).
fn queued_heap(mode: &str) {
    if !kusto_devserver::tools::azurite_or_skip() {
        return;
    }
    let az = kusto_devserver::azurite::Azurite::start().expect("azurite");
    let mut dm = kusto_devserver::DmConfig::new(az.endpoints());
    dm.poll_interval = std::time::Duration::from_millis(50);
    let server = Server::start(ServerConfig {
        dm: Some(dm),
        ..Default::default()
    })
    .unwrap();
    let mut cfg = Config::default();
    for (k, v) in [
        ("url", server.url().as_str()),
        ("http.allow_plain", "true"),
        ("ingest.mode", mode),
        ("ingest.dm_url", &server.dm_url().unwrap()),
        ("queued.report", "all"),
        ("destinations.max", "2"),
        ("batch.bytes", "262144"),
    ] {
        cfg.set(k, v).unwrap();
    }
    let bound = cfg.memory_bound() as usize;
    start_tracking();
    let client = Client::new(&cfg, None, None).unwrap();
    let a = client.add_destination("db", "a", "csv", None).unwrap();
    let b = client.add_destination("db", "b", "csv", None).unwrap();
    const TOTAL: usize = 24 << 20;
    let (mut sent, mut seq, mut peak_early) = (0usize, 0u64, 0usize);
    let mut line = String::with_capacity(256);
    while sent < TOTAL {
        use std::fmt::Write;
        line.clear();
        write!(
            line,
            "{seq},gw-{},{}.{},queued reading {}",
            seq % 13,
            seq % 90,
            seq % 10,
            seq * 7919
        )
        .unwrap();
        common::append(&client, if seq % 3 == 0 { a } else { b }, line.as_bytes()).unwrap();
        sent += line.len() + 1;
        seq += 1;
        // Managed: once both sinks have worked (the fallback starts half-way).
        let early = if mode == "managed" {
            TOTAL * 6 / 10
        } else {
            TOTAL / 10
        };
        if peak_early == 0 && sent >= early {
            peak_early = peak();
        }
        if mode == "managed" && sent >= TOTAL / 2 && sent - line.len() - 1 < TOTAL / 2 {
            // The second half: streaming refused, so chunks fall back to the queue.
            server.set_faults(kusto_devserver::Faults {
                seed: 7,
                random: vec![(kusto_devserver::Fault::StreamingDisabled, 1.0)],
            });
        }
    }
    client.flush().unwrap();
    // Wait for the DM's reports so that the tracking table empties through its normal path.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while client.stats().records_ingested < client.stats().records_queued
        && std::time::Instant::now() < until
    {
        client.poll().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let peak_end = peak();
    TRACK.with(|t| t.set(false));
    let st = client.stats();
    eprintln!(
        "{mode}: bound {bound} B, peak early {peak_early} B, at the end {peak_end} B; {seq} records, {} streamed, {} queued, {} ingested",
        st.records_acknowledged - st.records_queued, st.records_queued, st.records_ingested
    );
    assert_eq!(
        st.records_acknowledged, seq,
        "queued counts as acknowledged"
    );
    assert!(st.records_queued > 0);
    assert_eq!(
        st.records_ingested, st.records_queued,
        "every queued chunk confirmed"
    );
    if mode == "managed" {
        assert!(
            st.records_acknowledged > st.records_queued,
            "the first half streamed"
        );
    } else {
        assert_eq!(st.records_queued, seq);
    }
    assert!(
        peak_end <= bound,
        "peak {peak_end} exceeds the computed bound {bound}"
    );
    assert!(
        peak_end <= peak_early + 128 * 1024,
        "heap grew with input: {peak_early} early, {peak_end} at the end"
    );
    drop(client);
}

#[test]
fn heap_in_queued_mode_stays_within_the_bound_and_does_not_grow() {
    queued_heap("queued");
}

#[test]
fn heap_in_managed_mode_stays_within_the_bound_and_does_not_grow() {
    queued_heap("managed");
}

/// Streams `mb` MB of telemetry-like CSV over HTTPS through one destination of `batch_bytes` with `batch.sealed`
/// `sealed`, and returns (bound, heap peak, requests per MB, MB/s of wall time, this thread's CPU ms per MB).
fn small_gateway_run(batch_bytes: usize, sealed: u32, mb: usize) -> (usize, usize, f64, f64, f64) {
    let server = Server::start(ServerConfig {
        tls: true,
        ..Default::default()
    })
    .unwrap();
    let mut cfg = Config::default();
    cfg.set("url", &server.url()).unwrap();
    cfg.add_ca_pem(server.ca_pem().unwrap().as_bytes()).unwrap();
    cfg.set("tls.bundled_roots", "false").unwrap();
    cfg.set("destinations.max", "1").unwrap();
    cfg.set("batch.bytes", &batch_bytes.to_string()).unwrap();
    cfg.set("batch.sealed", &sealed.to_string()).unwrap();
    let bound = cfg.memory_bound() as usize;

    start_tracking();
    let cpu = thread_cpu_ms();
    let t = std::time::Instant::now();
    let client = Client::new(&cfg, None, None).unwrap();
    let d = client.add_destination("db", "t", "csv", None).unwrap();
    let mut line = String::with_capacity(256);
    let (mut sent, mut seq) = (0usize, 0u64);
    while sent < mb << 20 {
        line.clear();
        use std::fmt::Write;
        write!(
            line,
            "{seq},gw-{},2026-11-22T01:{:02}:{:02}Z,{}.{},{},ok",
            seq % 17,
            seq / 60 % 60,
            seq % 60,
            18 + seq % 9,
            seq % 10,
            35 + seq % 30
        )
        .unwrap();
        common::append(&client, d, line.as_bytes()).unwrap();
        sent += line.len() + 1;
        seq += 1;
        if seq.is_multiple_of(100_000) {
            server.reset();
        }
    }
    client.flush().unwrap();
    let (wall, cpu) = (t.elapsed(), thread_cpu_ms() - cpu);
    let peak = peak();
    TRACK.with(|t| t.set(false));
    let stats = client.stats();
    assert_eq!(stats.records_acknowledged, seq);
    let mbs = sent as f64 / 1e6;
    drop(client);
    (
        bound,
        peak,
        stats.requests as f64 / mbs,
        mbs / wall.as_secs_f64(),
        cpu / mbs,
    )
}

fn thread_cpu_ms() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-parameter; CLOCK_THREAD_CPUTIME_ID always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 * 1e3 + t.tv_nsec as f64 / 1e6
}

/// The README's small-gateway profile (destinations.max=1, batch.bytes=131072, batch.sealed=0): its heap peak is
/// within its computed bound and within 1 MiB. Prints the table of batch sizes the profile was chosen from.
#[test]
fn small_gateway_profile_heap_peaks_under_1_mib() {
    eprintln!("| batch.bytes | batch.sealed | bound | heap peak | requests per MB | MB/s (wall) | client CPU ms/MB |");
    eprintln!("|---|---|---|---|---|---|---|");
    for (kib, sealed) in [(64, 0), (64, 1), (128, 0), (128, 1), (256, 0), (256, 1)] {
        let (bound, peak, rpm, mbs, cpu) = small_gateway_run(kib << 10, sealed, 16);
        eprintln!(
            "| {kib} KiB | {sealed} | {:.0} KiB | {:.0} KiB | {rpm:.1} | {mbs:.1} | {cpu:.2} |",
            bound as f64 / 1024.0,
            peak as f64 / 1024.0
        );
        assert!(
            peak <= bound,
            "{kib} KiB, sealed {sealed}: peak {peak} > bound {bound}"
        );
        if (kib, sealed) == (128, 0) {
            assert!(
                bound <= 1 << 20 && peak <= 1 << 20,
                "the small-gateway profile: bound {bound}, peak {peak}, over 1 MiB"
            );
        }
    }
}
