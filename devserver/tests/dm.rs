//! The data-management side over a real Azurite: SAS minting, the management commands, the ingestor.

use std::time::Duration;

use kusto_devserver::azurite::Azurite;
use kusto_devserver::storage::{self, Account};

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[test]
fn azurite_accepts_minted_sas_and_refuses_tampered_or_expired() {
    let az = Azurite::start().expect("azurite");
    let acct = Account::new(az.endpoints());
    acct.create_container("cont1").unwrap();
    acct.create_queue("queue1").unwrap();
    if let Err(e) = acct.create_table("status1") {
        panic!("{e}")
    }
    let t = now();
    let url = acct.container_url("cont1", "rw", t - 60, t + 3600);
    let blob = storage::put_blob(&url, "a.csv.gz", b"hello", None).unwrap();
    assert_eq!(storage::get_blob(&blob, None).unwrap(), b"hello");
    // One character of the signature changed: 403 AuthenticationFailed.
    let i = url.find("sig=").unwrap() + 4;
    let mut bad = url.clone();
    let c = if &url[i..i + 1] == "A" { "B" } else { "A" };
    bad.replace_range(i..i + 1, c);
    let e = storage::put_blob(&bad, "b.csv.gz", b"x", None).unwrap_err();
    assert_eq!(e.status, 403, "{e}");
    assert!(
        e.code.starts_with("Authori") || e.code.starts_with("Authenti"),
        "{e}"
    );
    // Expired.
    let old = acct.container_url("cont1", "rw", t - 7200, t - 3600);
    assert_eq!(
        storage::put_blob(&old, "c.gz", b"x", None)
            .unwrap_err()
            .status,
        403
    );
    // Read-only SAS cannot write.
    let ro = acct.container_url("cont1", "r", t - 60, t + 3600);
    assert_eq!(
        storage::put_blob(&ro, "d.gz", b"x", None)
            .unwrap_err()
            .status,
        403
    );

    let q = acct.queue_url("queue1", "raup", t - 60, t + 3600);
    storage::put_message(&q, "aGVsbG8=", None).unwrap();
    let peek = storage::get_messages(&q, 32, None, None).unwrap();
    assert_eq!(peek.len(), 1);
    let got = storage::get_messages(&q, 32, Some(Duration::from_secs(30)), None).unwrap();
    assert_eq!(got[0].text, "aGVsbG8=");
    storage::delete_message(&q, &got[0], None).unwrap();
    assert!(storage::get_messages(&q, 32, None, None)
        .unwrap()
        .is_empty());
    let add_only = acct.queue_url("queue1", "a", t - 60, t + 3600);
    assert_eq!(
        storage::get_messages(&add_only, 1, None, None)
            .unwrap_err()
            .status,
        403
    );

    let tb = acct.table_url("status1", "raud", t - 60, t + 3600);
    let e = serde_json::json!({"PartitionKey":"p","RowKey":"r","Status":"Pending"});
    storage::insert_entity(&tb, &e, None).unwrap();
    storage::merge_entity(
        &tb,
        "p",
        "r",
        &serde_json::json!({"Status":"Succeeded"}),
        None,
    )
    .unwrap();
    assert_eq!(
        storage::get_entity(&tb, "p", "r", None).unwrap()["Status"],
        "Succeeded"
    );
}
