//! What queued ingestion reads from the DM and from storage: the v1 data sets of the two management commands,
//! storage XML errors, queue message lists and base64 notifications. None may panic, and what they return must
//! be usable: a resource set has a queue and a container, every URL an account.
//!
//! Input: one selector byte, then the answer.
#![no_main]

use kusto_edge_core::response::FailureClass;
use kusto_edge_core::sink::queued::{resources, status, storage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    match which % 4 {
        0 => {
            if let Some(r) = resources::parse_resources(body) {
                assert!(!r.queues.is_empty() && !r.containers.is_empty());
                for u in r.queues.iter().chain(&r.containers).chain(&r.failed) {
                    assert!(!u.account.is_empty());
                    assert_eq!(
                        resources::account_of(u.url.expose()).as_deref(),
                        Some(u.account.as_str())
                    );
                }
            }
            let _ = resources::parse_identity_token(body);
        }
        1 => {
            let status = 300 + (body.first().copied().unwrap_or(0) as u16 % 300);
            let v = storage::classify(status, body, "upload", "acct");
            assert_eq!(v.failure.status, status);
            assert!(!v.failure.message.is_empty());
            if status == 403 {
                assert!(v.refresh && v.failure.class == FailureClass::Auth);
            }
        }
        2 => {
            let text = String::from_utf8_lossy(body);
            let mut scratch = Vec::new();
            for m in status::parse_messages(&text) {
                let _ = status::parse_notification(m.text, &mut scratch);
            }
        }
        _ => {
            let text = String::from_utf8_lossy(body);
            let mut scratch = Vec::new();
            if let Some(n) = status::parse_notification(&text, &mut scratch) {
                assert!(!n.source_id.is_empty());
            }
        }
    }
});
