//! ScanDLP throughput: a ~1 MiB message (text parts plus a zip attachment)
//! scanned with the 5 built-in rules and 5 config rules (10 in all).
//!
//! `CARGO_TARGET_DIR=… cargo bench --bench dlp`

use std::collections::BTreeMap;
use std::io::{Cursor, Write};
use std::time::Instant;

use base64::Engine as _;
use serde_json::json;
use sluice::scan::dlp::{DlpEngine, ScanOptions, Selection};

#[path = "support/cpu.rs"]
mod cpu;
use cpu::thread_cpu_secs;

fn b64(data: &[u8]) -> String {
    let s = base64::engine::general_purpose::STANDARD.encode(data);
    s.as_bytes()
        .chunks(76)
        .map(|c| format!("{}\r\n", std::str::from_utf8(c).unwrap()))
        .collect()
}

/// Prose with numbers that look like (but are not) card numbers and IBANs.
fn prose(n: usize, seed: u64) -> String {
    let words = [
        "the",
        "invoice",
        "shipment",
        "order",
        "account",
        "meeting",
        "quarterly",
        "report",
        "délai",
        "Überweisung",
        "customer",
        "reference",
        "total",
        "please",
        "find",
        "attached",
    ];
    let mut x = seed;
    let mut s = String::with_capacity(n + 64);
    while s.len() < n {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let w = words[(x >> 33) as usize % words.len()];
        s.push_str(w);
        match (x >> 20) % 23 {
            0 => s.push_str(&format!(" {} ", (x >> 8) % 10_000_000_000_000)),
            1 => s.push_str(" DE12 3456 7890 1234 5678 90 "),
            2 => s.push_str(".\r\n"),
            _ => s.push(' '),
        }
    }
    s
}

fn message() -> Vec<u8> {
    let mut z = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for i in 0..4 {
        z.start_file(format!("docs/report-{i}.txt"), opts).unwrap();
        z.write_all(prose(200_000, i).as_bytes()).unwrap();
    }
    z.start_file("bin/data.bin", opts).unwrap();
    let mut x = 7u64;
    let noise: Vec<u8> = (0..150_000)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            (x >> 56) as u8
        })
        .collect();
    z.write_all(&noise).unwrap();
    let zip = z.finish().unwrap().into_inner();
    let mut m = String::from(
        "From: a@example.org\r\nTo: b@example.net\r\nSubject: bench\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"BB\"\r\n\r\n",
    );
    let mut i = 0;
    while m.len() + zip.len() * 4 / 3 < (1 << 20) - 4096 {
        let body = prose(60_000.min((1 << 20) - m.len() - zip.len() * 4 / 3), 100 + i);
        m.push_str(&format!(
            "--BB\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Transfer-Encoding: 8bit\r\n\r\n{body}\r\n"
        ));
        i += 1;
    }
    m.push_str(&format!(
        "--BB\r\nContent-Type: application/zip; name=\"docs.zip\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{}--BB--\r\n",
        b64(&zip)
    ));
    m.into_bytes()
}

fn main() {
    let mut cfg = BTreeMap::new();
    cfg.insert(
        "EXE_NAME".into(),
        json!({"filename": ["/\\.(exe|scr|js|vbs)$/i"]}),
    );
    cfg.insert(
        "MACRO_DOC".into(),
        json!({"contenttype": ["application/vnd.ms-excel.sheet.macroEnabled.12"]}),
    );
    cfg.insert(
        "KNOWN_BAD".into(),
        json!({"sha256hash": ["aa5e6b45f5d5d5c5f6d6cb08a8c8c3ea4f2a05bd87e2a2f0dd1a36e1ee2fcc31"]}),
    );
    cfg.insert("HUGE".into(), json!({"size": ">20M"}));
    cfg.insert(
        "PROJECT".into(),
        json!({"content": ["/project\\s+bluebird/i"]}),
    );
    let engine = DlpEngine::from_config(&cfg).expect("rules");
    assert_eq!(engine.rules().len(), 10);
    let raw = message();
    let opts = ScanOptions::default();
    let r = engine.scan(&raw, &Selection::All, &opts);
    // Warm up, then measure.
    for _ in 0..3 {
        engine.scan(&raw, &Selection::All, &opts);
    }
    let iters = 40;
    let t = Instant::now();
    let cpu0 = thread_cpu_secs();
    for _ in 0..iters {
        std::hint::black_box(engine.scan(&raw, &Selection::All, &opts));
    }
    let cpu = thread_cpu_secs() - cpu0;
    let secs = t.elapsed().as_secs_f64();
    let mb = raw.len() as f64 * iters as f64 / 1e6;
    println!(
        "dlp: message {} bytes, {} rules, matched {:?}: {:.1} MB/s per core of CPU time \
         ({:.2} ms CPU/message); {:.1} MB/s wall clock",
        raw.len(),
        engine.rules().len(),
        r.rules(),
        mb / cpu,
        cpu * 1000.0 / iters as f64,
        mb / secs,
    );
}
