//! An independent client: Python's smtplib (send_message, DSN options,
//! STARTTLS with the test certificate) plus raw-socket pipelining and BDAT.

mod common;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_smtplib_client() {
    let srv = TestServer::start(
        "[[listener]]\nid = \"inbound\"\naddress = \"127.0.0.1:0\"\ntls = \"starttls\"\n",
    )
    .await;
    let addr = srv.addr();
    let out = tokio::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/py/smtplib_client.py"
        ))
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .arg(srv.cert_path())
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), out)
        .await
        .expect("python timed out")
        .expect("python3 must be installed (see .ci/run)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["bad_param"], 555);
    assert!(v["tls_version"].as_str().unwrap().starts_with("TLSv1."));

    let entries = srv.store().list_entries().unwrap();
    // plain, dsn, tls, pipelined, bdat
    assert_eq!(entries.len(), 5, "{entries:#?}");
    let plain = &entries[0];
    assert_eq!(plain.recipients.len(), 2);
    let body = srv.store().get_body(&plain.body).unwrap().unwrap();
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("Subject: plain one\r\n"));
    assert!(
        text.contains("\r\n.leading dot line\r\n"),
        "dot unstuffed: {text}"
    );
    let dsn = &entries[1];
    assert_eq!(dsn.dsn.ret.as_deref(), Some("HDRS"));
    assert_eq!(dsn.dsn.envid.as_deref(), Some("py-env-1"));
    assert_eq!(dsn.recipients[0].dsn.notify, vec!["FAILURE", "DELAY"]);
    assert!(entries[2].client.tls.is_some());
    let bdat = srv.store().get_body(&entries[4].body).unwrap().unwrap();
    assert_eq!(
        stored_without_received(&bdat),
        b"Subject: bdat\r\n\r\nfirst second\r\n"
    );
}
