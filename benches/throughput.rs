//! Throughput benchmarks, rerunnable with `cargo bench --bench throughput`. Every figure comes with a ratio
//! measured in the same run, because this kind of machine is noisy: compare ratios across runs, not MB/s.
//!
//! - gzip: CPU per MB and wire bytes of telemetry JSON at levels 1 to 9, against level 3 (the default); CRC-32;
//! - pipeline: the whole client's CPU per MB on one thread against the compressor alone on the same bytes (bound
//!   1.3x);
//! - latency: append to acknowledgement, one record at a time over loopback HTTPS, p50/p99/max (bound p99 0.5 ms),
//!   with the client's own CPU beside it;
//! - end to end: records through `Client::append` + `flush` to the loopback test endpoint, plain http vs HTTPS;
//! - spool: chunks pushed to a spool directory (fsync per chunk), in clear vs AES-256-GCM;
//! - queued: client CPU per MB and requests per MB in queued mode (blob + message, Azurite) against streaming;
//! - append: the latency of `Client::append` while another thread polls (sends), json (syntax-checked) vs csv.

use std::time::{Duration, Instant};

use kusto_devserver::{Server, ServerConfig};
use kusto_edge_core::gzip::{compressed_bound, Gzip};
use kusto_edge_core::spool::{
    Area, ChunkHeader, DestKey, FsStorage, FullPolicy, Spool, SpoolConfig, Storage,
};
use kusto_edge_core::{Client, Config, DeliveryReport};

fn telemetry(bytes: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes + 200);
    let mut seq = 0u64;
    while out.len() < bytes {
        out.extend_from_slice(
            format!(
                "{{\"seq\":{seq},\"device\":\"gw-{}\",\"ts\":\"2026-11-22T01:{:02}:{:02}Z\",\"temp\":{}.{},\"humidity\":{},\"status\":\"ok\"}}\n",
                seq % 17,
                seq / 60 % 60,
                seq % 60,
                18 + seq % 9,
                seq % 10,
                35 + seq % 30
            )
            .as_bytes(),
        );
        seq += 1;
    }
    out
}

/// Megabytes of telemetry a benchmark uses: `KEDGE_BENCH_MB` overrides the default (a small run under valgrind).
fn bench_mb(default: usize) -> usize {
    std::env::var("KEDGE_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn mb_per_s(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

/// CPU time of this thread: what the client spends, whatever else the 2 cores are doing.
fn thread_cpu() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-parameter; CLOCK_THREAD_CPUTIME_ID always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// CPU per MB (best of 3 passes) and wire bytes of `data` compressed in 1 MiB pieces, as the client sends it.
fn gzip_cpu(level: u8, data: &[u8]) -> (f64, usize) {
    let mut g = Gzip::new(level);
    let mut out = Vec::with_capacity(compressed_bound(1 << 20));
    let mut best = Duration::MAX;
    let mut wire = 0;
    for _ in 0..3 {
        let t = thread_cpu();
        wire = 0;
        for piece in data.chunks(1 << 20) {
            wire += g.compress(piece, &mut out).unwrap();
        }
        best = best.min(thread_cpu() - t);
    }
    (best.as_secs_f64() * 1e3 / (data.len() as f64 / 1e6), wire)
}

fn bench_gzip() {
    let data = telemetry(32 << 20);
    let (cpu3, wire3) = gzip_cpu(3, &data);
    println!(
        "gzip of {} MB of telemetry in 1 MiB pieces, CPU per MB (best of 3) and wire bytes, against level 3:",
        data.len() >> 20
    );
    println!("| level | CPU ms/MB | MB/s | wire % of raw | CPU vs 3 | wire vs 3 |");
    println!("|---|---|---|---|---|---|");
    for level in 1u8..=9 {
        let (cpu, wire) = if level == 3 {
            (cpu3, wire3)
        } else {
            gzip_cpu(level, &data)
        };
        println!(
            "| {level} | {cpu:.2} | {:.0} | {:.2} | {:.2}x | {:.3}x |",
            1e3 / cpu,
            wire as f64 * 100.0 / data.len() as f64,
            cpu / cpu3,
            wire as f64 / wire3 as f64
        );
    }
    let mut c = kusto_edge_core::crc32::Crc32::new();
    let t = thread_cpu();
    c.update(&data);
    let crc = thread_cpu() - t;
    println!(
        "crc32 (crc32fast): {:.2} ms/MB = {:.0} MB/s, {:.1} % of level 3's CPU (checksum {:08x})",
        crc.as_secs_f64() * 1e3 / (data.len() as f64 / 1e6),
        data.len() as f64 / 1e6 / crc.as_secs_f64(),
        crc.as_secs_f64() * 1e3 / (data.len() as f64 / 1e6) * 100.0 / cpu3,
        c.finish()
    );
}

/// The pipeline benches' client: one destination of `format` on an in-process endpoint over plain http,
/// batch.sealed=0 as kedge-send has it. The endpoint lives as long as the first element.
fn pipeline_client(format: &str) -> (Server, Client, u32) {
    let server = Server::start(ServerConfig::default()).unwrap();
    let mut cfg = Config::default();
    cfg.set("url", &server.url()).unwrap();
    cfg.set("http.allow_plain", "true").unwrap();
    cfg.set("batch.sealed", "0").unwrap();
    let client = Client::new(&cfg, None, None).unwrap();
    let d = client.add_destination("db", "bench", format, None).unwrap();
    (server, client, d)
}

/// Whole-client CPU per MB: records appended and sent by this one thread (batch.sealed=0, as kedge-send does), to
/// the in-process endpoint over plain http, whose threads' CPU is not counted; and the wire bytes.
fn pipeline_cpu(records: &[&[u8]], raw: usize, format: &str) -> (f64, u64) {
    let (_server, client, d) = pipeline_client(format);
    let t = thread_cpu();
    for r in records {
        while let Err(e) = client.append(d, r) {
            assert_eq!(e.kind, kusto_edge_core::ErrorKind::QueueFull, "{e}");
            client.poll().unwrap();
        }
    }
    client.flush().unwrap();
    let cpu = thread_cpu() - t;
    (
        cpu.as_secs_f64() * 1e3 / (raw as f64 / 1e6),
        client.stats().bytes_sent_wire,
    )
}

/// [`pipeline_cpu`] through `append_lines`: the buffer handed over in 64 KiB reads as kedge-send does, one
/// call per read instead of one per record.
fn pipeline_lines_cpu(data: &[u8], format: &str) -> f64 {
    let (_server, client, d) = pipeline_client(format);
    let t = thread_cpu();
    let (mut at, mut records) = (0, 0);
    while at < data.len() {
        // A read's worth, or the rest; a line cut by its end is taken with the next read.
        let end = (at + (64 << 10)).min(data.len());
        let (taken, r) = client.append_lines(d, &data[at..end], u64::MAX);
        at += taken.consumed;
        records += taken.records;
        match r {
            Ok(()) if taken.consumed == 0 => break, // no whole line left: checked below
            Ok(()) => {}
            Err(e) => {
                assert_eq!(e.kind, kusto_edge_core::ErrorKind::QueueFull, "{e}");
                client.poll().unwrap();
            }
        }
    }
    client.flush().unwrap();
    let cpu = thread_cpu() - t;
    // The generator's lines are short and newline-ended, none empty: every byte is taken, one record a line.
    assert_eq!(
        at,
        data.len(),
        "a line longer than a read, or no newline at the end"
    );
    assert_eq!(
        records as usize,
        data.split(|&b| b == b'\n')
            .filter(|r| !r.is_empty())
            .count()
    );
    cpu.as_secs_f64() * 1e3 / (data.len() as f64 / 1e6)
}

fn bench_pipeline() {
    let data = telemetry(bench_mb(32) << 20);
    let records: Vec<&[u8]> = data
        .split(|&b| b == b'\n')
        .filter(|r| !r.is_empty())
        .collect();
    // The machine's speed moves between seconds (other tenants): each pipeline run is set against the compressor
    // alone timed right before and right after it, and the median of the ratios is the figure.
    let mut alone_runs = vec![gzip_cpu(3, &data)];
    let ratio = |cpu: f64, runs: &mut Vec<(f64, usize)>| {
        let before = runs.last().unwrap().0;
        let after = gzip_cpu(3, &data);
        runs.push(after);
        cpu * 2.0 / (before + after.0)
    };
    let (mut json, mut csv, mut lines) = (Vec::new(), Vec::new(), Vec::new());
    let (mut json_ratios, mut csv_ratios, mut lines_ratios) = (Vec::new(), Vec::new(), Vec::new());
    let mut wire = 0;
    for _ in 0..3 {
        let (cpu, w) = pipeline_cpu(&records, data.len(), "json");
        wire = w;
        json.push(cpu);
        json_ratios.push(ratio(cpu, &mut alone_runs));
        // The same bytes declared csv: no JSON syntax check, the share of everything else.
        let (cpu, _) = pipeline_cpu(&records, data.len(), "csv");
        csv.push(cpu);
        csv_ratios.push(ratio(cpu, &mut alone_runs));
        // The json records again, handed over as lines.
        let cpu = pipeline_lines_cpu(&data, "json");
        lines.push(cpu);
        lines_ratios.push(ratio(cpu, &mut alone_runs));
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (best, best_csv) = (median(&mut json), median(&mut csv));
    let (r_json, r_csv) = (median(&mut json_ratios), median(&mut csv_ratios));
    let (best_lines, r_lines) = (median(&mut lines), median(&mut lines_ratios));
    let alone = median(&mut alone_runs.iter().map(|a| a.0).collect());
    let alone_wire = alone_runs[0].1;
    let (check, bytewise) = (
        json_check_cpu(&records, false),
        json_check_cpu(&records, true),
    );
    println!(
        "pipeline, {} records ({} MB) through append + poll on one thread (batch.sealed=0, level 3, plain http): \
         {best:.2} ms CPU per MB (median of 3), the compressor alone on the same bytes in 1 MiB pieces {alone:.2} \
         (median); each run against the compressor timed right before and after it, median: {r_json:.2}x (bound \
         1.3x); wire {:.2} % vs {:.2} %; the same records as csv (no JSON check) {best_csv:.2} ms: {r_csv:.2}x; \
         as json through append_lines in 64 KiB reads {best_lines:.2} ms: {r_lines:.2}x",
        records.len(),
        data.len() >> 20,
        wire as f64 * 100.0 / data.len() as f64,
        alone_wire as f64 * 100.0 / data.len() as f64,
    );
    println!(
        "  the JSON syntax check alone on those records: {check:.2} ms per MB, a byte at a time {bytewise:.2} ms \
         ({:.2}x); {:.1} % of the pipeline's CPU",
        bytewise / check,
        check * 100.0 / best
    );
}

/// CPU per MB (best of 3) of the JSON syntax check `append` runs on each record, word-at-a-time or (`bytewise`) the
/// byte-at-a-time reference.
fn json_check_cpu(records: &[&[u8]], bytewise: bool) -> f64 {
    use kusto_edge_core::json_check::{check, check_bytewise};
    let raw: usize = records.iter().map(|r| r.len() + 1).sum();
    let mut best = Duration::MAX;
    for _ in 0..3 {
        let t = thread_cpu();
        for r in records {
            let ok = if bytewise {
                check_bytewise(std::hint::black_box(r), false)
            } else {
                check(std::hint::black_box(r), false)
            };
            assert!(ok.is_ok());
        }
        best = best.min(thread_cpu() - t);
    }
    best.as_secs_f64() * 1e3 / (raw as f64 / 1e6)
}

fn end_to_end(tls: bool, records: &[&[u8]]) -> (Duration, u64) {
    let server = Server::start(ServerConfig {
        tls,
        ..Default::default()
    })
    .unwrap();
    let mut cfg = Config::default();
    cfg.set("url", &server.url()).unwrap();
    match server.ca_pem() {
        Some(pem) => cfg.add_ca_pem(pem.as_bytes()).unwrap(),
        None => cfg.set("http.allow_plain", "true").unwrap(),
    }
    cfg.set("batch.bytes", "1048576").unwrap();
    let client = Client::new(&cfg, None, None).unwrap();
    let d = client.add_destination("db", "bench", "json", None).unwrap();
    let t = Instant::now();
    for r in records {
        // A full lane: let poll send, then offer the record again.
        while let Err(e) = client.append(d, r) {
            assert_eq!(e.kind, kusto_edge_core::ErrorKind::QueueFull, "{e}");
            client.poll().unwrap();
        }
    }
    client.flush().unwrap();
    let took = t.elapsed();
    (took, client.stats().requests)
}

fn bench_end_to_end() {
    let data = telemetry(64 << 20);
    let records: Vec<&[u8]> = data
        .split(|&b| b == b'\n')
        .filter(|r| !r.is_empty())
        .collect();
    let (plain, reqs) = end_to_end(false, &records);
    let (tls, _) = end_to_end(true, &records);
    println!(
        "end to end, {} records ({} MB raw) in {reqs} requests of 1 MiB: plain http {:.0} MB/s ({:.0} k records/s), HTTPS {:.0} MB/s (HTTPS = {:.2} x plain)",
        records.len(),
        data.len() >> 20,
        mb_per_s(data.len(), plain),
        records.len() as f64 / plain.as_secs_f64() / 1e3,
        mb_per_s(data.len(), tls),
        plain.as_secs_f64() / tls.as_secs_f64()
    );
}

/// CPU time (ns) of this process's other threads: the in-process test endpoint's, from
/// /proc/self/task/*/schedstat (its first field is the time the thread has run on a CPU).
fn other_threads_cpu_ns() -> u64 {
    let me = std::fs::read_link("/proc/thread-self").unwrap_or_default();
    let me = me.file_name().map(|n| n.to_owned()).unwrap_or_default();
    let mut total = 0;
    for t in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        if t.file_name() == me {
            continue;
        }
        if let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) {
            total += s
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    total
}

/// Append to acknowledgement for one record at a time (batch.max_age_ms=0, batch.sealed=0), over loopback HTTPS
/// with keep-alive, all on this thread: append, then poll until the delivery callback reports it. Returns the
/// latencies (ns, sorted) and this thread's CPU per record (ns): the client's share; the rest of each latency
/// is waiting for the endpoint (its TLS, inflate, JSON parse and store, on the other core) and the loopback.
fn ack_latencies(records: &[Vec<u8>]) -> (Vec<u64>, u64, u64) {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    let server = Server::start(ServerConfig {
        tls: true,
        ..Default::default()
    })
    .unwrap();
    let mut cfg = Config::default();
    cfg.set("url", &server.url()).unwrap();
    cfg.add_ca_pem(server.ca_pem().unwrap().as_bytes()).unwrap();
    cfg.set("batch.max_age_ms", "0").unwrap();
    cfg.set("batch.sealed", "0").unwrap();
    let acked = std::sync::Arc::new(AtomicU64::new(0));
    let a = acked.clone();
    let delivery: kusto_edge_core::client::DeliveryFn =
        std::sync::Arc::new(move |r: &DeliveryReport<'_>| {
            if r.outcome == kusto_edge_core::Outcome::Acknowledged {
                a.fetch_add(r.records, Relaxed);
            }
        });
    let client = Client::new(&cfg, None, Some(delivery)).unwrap();
    let d = client.add_destination("db", "bench", "json", None).unwrap();
    // The first request opens the connection (TCP + TLS handshake): not counted.
    client.append(d, &records[0]).unwrap();
    client.flush().unwrap();
    let mut lat = Vec::with_capacity(records.len());
    let cpu = thread_cpu();
    let endpoint = other_threads_cpu_ns();
    for (i, r) in records.iter().enumerate() {
        let t = Instant::now();
        client.append(d, r).unwrap();
        while acked.load(Relaxed) < i as u64 + 2 {
            client.poll().unwrap();
        }
        lat.push(t.elapsed().as_nanos() as u64);
    }
    let cpu = (thread_cpu() - cpu).as_nanos() as u64 / records.len() as u64;
    let endpoint = (other_threads_cpu_ns() - endpoint) / records.len() as u64;
    assert_eq!(client.stats().requests, records.len() as u64 + 1);
    lat.sort_unstable();
    (lat, cpu, endpoint)
}

fn bench_latency() {
    let data = telemetry(400_000);
    let records: Vec<Vec<u8>> = data
        .split(|&b| b == b'\n')
        .filter(|r| !r.is_empty())
        .take(3000)
        .map(<[u8]>::to_vec)
        .collect();
    let (lat, cpu, endpoint) = ack_latencies(&records);
    let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p) as usize] as f64 / 1e3;
    let p50 = pct(0.5);
    let (cpu, endpoint) = (cpu as f64 / 1e3, endpoint as f64 / 1e3);
    println!(
        "append to acknowledgement, {} records one at a time (max_age 0, HTTPS keep-alive, loopback): p50 {p50:.0} us, \
         p99 {:.0} us (bound 500 us), max {:.0} us; CPU per record: the client's thread {cpu:.0} us ({:.0} % of p50), \
         the test endpoint's threads {endpoint:.0} us ({:.0} % of p50) measured separately; the rest of p50 ({:.0} us) \
         is waiting (wake-ups, the loopback, other processes on the 2 cores)",
        records.len(),
        pct(0.99),
        lat[lat.len() - 1] as f64 / 1e3,
        cpu * 100.0 / p50,
        endpoint * 100.0 / p50,
        (p50 - cpu - endpoint).max(0.0)
    );
}

/// Client-thread CPU per MB and HTTP requests of `records` appended and sent (batch.sealed=0, 1 MiB batches) in
/// `mode` (streaming or queued) to the test endpoint, which is also the DM over Azurite.
fn mode_cpu(server: &Server, records: &[&[u8]], raw: usize, mode: &str) -> (f64, u64) {
    let mut cfg = Config::default();
    cfg.set("url", &server.url()).unwrap();
    cfg.set("http.allow_plain", "true").unwrap();
    cfg.set("batch.sealed", "0").unwrap();
    cfg.set("ingest.mode", mode).unwrap();
    cfg.set("ingest.dm_url", &server.dm_url().unwrap()).unwrap();
    let client = Client::new(&cfg, None, None).unwrap();
    let d = client.add_destination("db", "bench", "json", None).unwrap();
    let t = thread_cpu();
    for r in records {
        while let Err(e) = client.append(d, r) {
            assert_eq!(e.kind, kusto_edge_core::ErrorKind::QueueFull, "{e}");
            client.poll().unwrap();
        }
    }
    client.flush().unwrap();
    let cpu = thread_cpu() - t;
    assert_eq!(client.stats().records_acknowledged, records.len() as u64);
    (
        cpu.as_secs_f64() * 1e3 / (raw as f64 / 1e6),
        client.stats().requests,
    )
}

fn bench_queued() {
    let az = match kusto_devserver::azurite::Azurite::start() {
        Ok(az) => az,
        Err(e) => {
            println!("queued: skipped, Azurite does not start ({e}); tests/run-all.sh installs it");
            return;
        }
    };
    let mut dm = kusto_devserver::DmConfig::new(az.endpoints());
    dm.poll_interval = Duration::from_millis(50);
    let server = Server::start(ServerConfig {
        dm: Some(dm),
        ..ServerConfig::default()
    })
    .unwrap();
    let data = telemetry(bench_mb(16) << 20);
    let records: Vec<&[u8]> = data
        .split(|&b| b == b'\n')
        .filter(|r| !r.is_empty())
        .collect();
    let mb = data.len() as f64 / 1e6;
    let (mut q_cpu, mut s_cpu) = (f64::MAX, f64::MAX);
    let (mut q_req, mut s_req) = (0, 0);
    for _ in 0..2 {
        let (c, r) = mode_cpu(&server, &records, data.len(), "queued");
        (q_cpu, q_req) = (q_cpu.min(c), r);
        let (c, r) = mode_cpu(&server, &records, data.len(), "streaming");
        (s_cpu, s_req) = (s_cpu.min(c), r);
        server.reset();
    }
    println!(
        "queued vs streaming, {} MB of telemetry in 1 MiB batches (batch.sealed=0, plain http; the test endpoint as \
         engine and DM, Azurite as storage): client CPU queued {q_cpu:.2} ms per MB, streaming {s_cpu:.2} (queued = \
         {:.2}x streaming, best of 2); requests per MB queued {:.2} (blob, queue message, DM resources and \
         notifications), streaming {:.2} ({:.2}x)",
        data.len() >> 20,
        q_cpu / s_cpu,
        q_req as f64 / mb,
        s_req as f64 / mb,
        q_req as f64 / s_req as f64
    );
    drop(server);
    drop(az);
}

/// A spool directory that counts what reaches the flash: fsyncs (each file written, each directory sync) and the
/// bytes of the files written.
struct Counting {
    inner: FsStorage,
    fsyncs: u64,
    bytes: u64,
}

impl Storage for Counting {
    fn list(&mut self, area: Area, out: &mut Vec<String>) -> std::io::Result<()> {
        self.inner.list(area, out)
    }
    fn write_file(&mut self, area: Area, name: &str, parts: &[&[u8]]) -> std::io::Result<()> {
        self.fsyncs += 1;
        self.bytes += parts.iter().map(|p| p.len() as u64).sum::<u64>();
        self.inner.write_file(area, name, parts)
    }
    fn rename(&mut self, from: (Area, &str), to: (Area, &str)) -> std::io::Result<()> {
        self.inner.rename(from, to)
    }
    fn remove(&mut self, area: Area, name: &str) -> std::io::Result<()> {
        self.inner.remove(area, name)
    }
    fn sync_area(&mut self, area: Area) -> std::io::Result<()> {
        self.fsyncs += 1;
        self.inner.sync_area(area)
    }
    fn file_len(&mut self, area: Area, name: &str) -> std::io::Result<u64> {
        self.inner.file_len(area, name)
    }
    fn read_at(
        &mut self,
        area: Area,
        name: &str,
        offset: u64,
        buf: &mut [u8],
    ) -> std::io::Result<usize> {
        self.inner.read_at(area, name, offset, buf)
    }
}

/// Pushes `chunks` copies of `payload` (the gzip of `raw_len` raw bytes) as an outage would; returns the time,
/// the fsyncs and the bytes written to flash.
fn spool_push(
    key: Option<[u8; 32]>,
    payload: &[u8],
    raw_len: usize,
    chunks: u32,
) -> (Duration, u64, u64) {
    let dir = std::env::temp_dir().join(format!(
        "kedge-bench-spool-{}-{}",
        std::process::id(),
        key.is_some()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let storage = Counting {
        inner: FsStorage::new(&dir).unwrap(),
        fsyncs: 0,
        bytes: 0,
    };
    let cfg = SpoolConfig {
        max_bytes: 1 << 40,
        max_chunks: 100_000,
        policy: FullPolicy::DropOldest,
        key,
        trim_on_open: false,
        max_payload_len_queued: kusto_edge_core::spool::MAX_PAYLOAD_LEN,
        quarantine_max_bytes: 1 << 30,
        quarantine_max_chunks: 256,
    };
    let (mut spool, _) = Spool::open(storage, cfg).unwrap();
    let header = ChunkHeader {
        chunk_id: [7; 16],
        dest: DestKey {
            database: "db".into(),
            table: "t".into(),
            format: "json".into(),
            mapping: None,
        },
        created_unix_ms: 0,
        raw_len: raw_len as u32,
        records: 1000,
        gzip: true,
        sink: kusto_edge_core::spool::SinkId::Streaming,
    };
    let (f0, b0) = (spool.storage().fsyncs, spool.storage().bytes);
    let t = Instant::now();
    for _ in 0..chunks {
        spool.push(&header, payload).unwrap();
    }
    let took = t.elapsed();
    let (fsyncs, bytes) = (spool.storage().fsyncs - f0, spool.storage().bytes - b0);
    let _ = std::fs::remove_dir_all(&dir);
    (took, fsyncs, bytes)
}

fn bench_spool() {
    // An outage: the client's 1 MiB batches, gzip level 3, each pushed as one chunk.
    let raw = telemetry(1 << 20);
    let mut g = Gzip::new(3);
    let mut payload = Vec::with_capacity(compressed_bound(raw.len()));
    g.compress(&raw, &mut payload).unwrap();
    let n = 100;
    let (clear, fsyncs, bytes) = spool_push(None, &payload, raw.len(), n);
    let (sealed, _, sealed_bytes) = spool_push(Some([9; 32]), &payload, raw.len(), n);
    let raw_total = (raw.len() * n as usize) as f64;
    println!(
        "spool, an outage of {n} chunks of 1 MiB raw ({} KiB gzip): clear {:.0} chunks/s ({:.1} ms each), {:.1} fsyncs \
         per chunk, {:.3} flash bytes per raw byte; AES-256-GCM {:.0} chunks/s (sealed = {:.2} x clear), {:.3} flash \
         bytes per raw byte",
        payload.len() >> 10,
        n as f64 / clear.as_secs_f64(),
        clear.as_secs_f64() * 1e3 / n as f64,
        fsyncs as f64 / n as f64,
        bytes as f64 / raw_total,
        n as f64 / sealed.as_secs_f64(),
        clear.as_secs_f64() / sealed.as_secs_f64(),
        sealed_bytes as f64 / raw_total
    );
}

/// Per-append latencies (ns, sorted) of `records` into one destination while another thread polls.
fn append_latencies(format: &str, records: &[Vec<u8>]) -> (Vec<u64>, u64) {
    let server = Server::start(ServerConfig::default()).unwrap();
    let mut cfg = Config::default();
    cfg.set("url", &server.url()).unwrap();
    cfg.set("http.allow_plain", "true").unwrap();
    cfg.set("batch.bytes", "1048576").unwrap();
    cfg.set("batch.sealed", "2").unwrap();
    let client = std::sync::Arc::new(Client::new(&cfg, None, None).unwrap());
    let d = client.add_destination("db", "bench", format, None).unwrap();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (c, stop) = (client.clone(), done.clone());
    let poller = std::thread::spawn(move || {
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let (next, _) = c.poll_next();
            std::thread::sleep(Duration::from_millis(u64::from(next.min(2))));
        }
    });
    let mut lat = Vec::with_capacity(records.len());
    let mut full = 0u64;
    for r in records {
        loop {
            let t = Instant::now();
            let res = client.append(d, r);
            lat.push(t.elapsed().as_nanos() as u64);
            match res {
                Ok(()) => break,
                Err(_) => {
                    full += 1;
                    std::thread::yield_now();
                }
            }
        }
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    poller.join().unwrap();
    client.flush().unwrap();
    lat.sort_unstable();
    (lat, full)
}

fn bench_append() {
    let data = telemetry(32 << 20);
    let json: Vec<Vec<u8>> = data
        .split(|&b| b == b'\n')
        .filter(|r| !r.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    // The same values as CSV rows of about the same length.
    let csv: Vec<Vec<u8>> = (0..json.len())
        .map(|i| {
            format!(
                "{i},gw-{},2026-11-22T01:00:00Z,21.{},{},ok,padpadpadpadpadpadpadpadpad",
                i % 17,
                i % 10,
                35 + i % 30
            )
            .into_bytes()
        })
        .collect();
    let pct = |l: &[u64], p: f64| l[((l.len() as f64 - 1.0) * p) as usize];
    let (j, jfull) = append_latencies("json", &json);
    let (c, cfull) = append_latencies("csv", &csv);
    let avg = |l: &[u64]| l.iter().sum::<u64>() as f64 / l.len() as f64;
    println!(
        "append while another thread sends, {} records: json p50 {} ns, p99 {} ns, max {} us ({jfull} QUEUE_FULL); csv p50 {} ns, p99 {} ns, max {} us ({cfull} QUEUE_FULL); json = {:.2} x csv on average",
        json.len(),
        pct(&j, 0.5),
        pct(&j, 0.99),
        j[j.len() - 1] / 1000,
        pct(&c, 0.5),
        pct(&c, 0.99),
        c[c.len() - 1] / 1000,
        avg(&j) / avg(&c)
    );
}

fn main() {
    // `cargo test --benches` runs this with --bench absent: keep that quick.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        println!("throughput: run with `cargo bench --bench throughput [-- NAME...]`");
        return;
    }
    // Names after `--` pick benchmarks (a substring of the name); none: all of them.
    let filters: Vec<&str> = args
        .iter()
        .filter(|a| !a.starts_with('-'))
        .map(String::as_str)
        .collect();
    let benches: [(&str, fn()); 7] = [
        ("gzip", bench_gzip),
        ("pipeline", bench_pipeline),
        ("end_to_end", bench_end_to_end),
        ("latency", bench_latency),
        ("append", bench_append),
        ("spool", bench_spool),
        ("queued", bench_queued),
    ];
    for (name, run) in benches {
        if filters.is_empty() || filters.iter().any(|f| name.contains(f)) {
            run();
        }
    }
}
