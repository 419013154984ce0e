//! The service's answer: `classify` over any status, `Retry-After` header and body prefix, and the two parsers it
//! rests on. None may panic, and they must agree with each other.
//!
//! Input: status (u16 LE), retry-after length (u8; 255 = no header), that many header bytes, then the body.
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use kusto_edge_core::response::{classify, parse_consumed, parse_retry_after, Reply};
use libfuzzer_sys::fuzz_target;

/// A fixed "now" keeps runs reproducible: 2023-11-14T22:13:20Z.
const NOW_SECS: u64 = 1_700_000_000;

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let now = UNIX_EPOCH + Duration::from_secs(NOW_SECS);
    let status = u16::from_le_bytes([data[0], data[1]]);
    let (retry_after, body) = match data[2] {
        255 => (None, &data[3..]),
        n => {
            let n = (n as usize).min(data.len() - 3);
            (
                Some(String::from_utf8_lossy(&data[3..3 + n]).into_owned()),
                &data[3 + n..],
            )
        }
    };

    let mut scratch = [0u8; 8 * 1024];
    let reply = classify(status, retry_after.as_deref(), body, now, &mut scratch);

    let consumed = parse_consumed(body);
    let delay = retry_after
        .as_deref()
        .and_then(|v| parse_retry_after(v, now));
    match (&reply, status) {
        (Reply::Acknowledged { consumed: c }, 200) => assert_eq!(Some(*c), consumed),
        (Reply::Acknowledged { .. }, _) => panic!("status {status} acknowledged"),
        (Reply::Failed(f), _) => {
            assert_eq!(f.status, status);
            assert_eq!(f.retry_after, delay);
            if status == 200 {
                assert_eq!(consumed, None, "200 with a data set reported as a failure");
            }
            assert!(!f.message.is_empty(), "a failure without a message");
            assert!(!f.advice().is_empty());
        }
    }

    // Delay-seconds are taken as they are; a date is a wait that only shrinks as time passes.
    if let Some(v) = retry_after.as_deref() {
        if let Ok(secs) = v.trim().parse::<u64>() {
            assert_eq!(delay, Some(Duration::from_secs(secs)));
        } else if let Some(d) = delay {
            // The same date a second later is never a longer wait.
            let later = parse_retry_after(v, now + Duration::from_secs(1)).unwrap();
            assert!(later <= d, "{v:?}: {later:?} a second later > {d:?}");
        }
    }
});
