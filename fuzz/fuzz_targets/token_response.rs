//! `parse_token_response` over any body, as Entra ID and as a managed identity endpoint: no panic, and a token it
//! accepts can go into an `Authorization` header and has a lifetime.
//!
//! Input: one byte whose low bit is the managed-identity flag, then the body. `expires_on` is measured against the
//! real clock (the function reads it), so that one field's outcome may differ between runs.
#![no_main]

use std::time::Duration;

use kusto_edge_core::auth::{parse_token_response, Lifetime};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, body)) = data.split_first() else {
        return;
    };
    let managed_identity = flags & 1 == 1;
    // A fixed "now" (2026-01-01): expiry times in the body are judged against it.
    match parse_token_response(body, managed_identity, 1_767_225_600) {
        Ok(t) => {
            let text = t.token.expose();
            assert!(!text.is_empty() && text.bytes().all(|b| (0x21..0x7f).contains(&b)));
            assert_eq!(t.managed_identity, managed_identity);
            let Lifetime::For(life) = t.lifetime else {
                panic!("a fetched token without a lifetime: {:?}", t.lifetime);
            };
            assert!(life > Duration::ZERO);
            if let Some(r) = t.refresh_in {
                assert!(r > Duration::ZERO && r < life);
            }
        }
        Err(e) => assert!(!e.message.is_empty()),
    }
});
