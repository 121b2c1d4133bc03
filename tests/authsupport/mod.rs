//! Shared by tests/auth.rs and benches/auth.rs: a loopback DNS server, a
//! MaxMind DB writer, keys and signed messages.
#![allow(dead_code)]
pub mod dns;
pub mod keys;
pub mod mmdb;

use dns::Zone;
use keys::Key;

/// The client the tests connect from: SPF-authorised for sender.com.
pub const GOOD_IP: &str = "192.0.2.10";
/// An address no SPF record authorises.
pub const BAD_IP: &str = "198.51.100.9";

/// The world of the tests. `dkim` signs for sender.com, strict.com,
/// mail.strict.com and example.co.uk (selector "sel"); `arc` seals for
/// gw.example (selector "arc").
pub fn standard_zone(dkim: &Key, arc: &Key) -> Zone {
    let mut z = Zone::new();
    let rec = dkim.dns_record();
    z.txt("sender.com", "v=spf1 ip4:192.0.2.10 ip6:2001:db8::10 -all")
        .txt("_dmarc.sender.com", "v=DMARC1; p=reject")
        .txt("sel._domainkey.sender.com", &rec)
        .txt("bounce.sender.com", "v=spf1 ip4:192.0.2.10 -all")
        .txt("mail.sender.com", "v=spf1 a -all")
        .a("mail.sender.com", "192.0.2.10")
        .a("mail.sender.com", "2001:db8::10")
        .ptr("192.0.2.10", "mail.sender.com")
        .ptr("2001:db8::10", "mail.sender.com")
        .ptr("192.0.2.11", "liar.sender.com")
        .mx("sender.com", 10, "mx.sender.com")
        .mx("sender.com", 20, "mx2.sender.com")
        // strict alignment
        .txt("_dmarc.strict.com", "v=DMARC1; p=reject; aspf=s; adkim=s")
        .txt("mail.strict.com", "v=spf1 ip4:192.0.2.10 -all")
        .txt("sel._domainkey.strict.com", &rec)
        .txt("sel._domainkey.mail.strict.com", &rec)
        // policies
        .txt("_dmarc.quar.com", "v=DMARC1; p=quarantine")
        .txt("_dmarc.nonepol.com", "v=DMARC1; p=none")
        .txt("_dmarc.parent.com", "v=DMARC1; p=reject; sp=quarantine")
        .txt("_dmarc.pct0.com", "v=DMARC1; p=reject; pct=0")
        .txt("_dmarc.pctq.com", "v=DMARC1; p=quarantine; pct=0")
        .txt("_dmarc.example.co.uk", "v=DMARC1; p=reject; sp=none")
        .txt("sel._domainkey.example.co.uk", &rec)
        .txt("_dmarc.spffail.com", "v=DMARC1; p=reject")
        // RFC 9091: np for non-existent subdomains, PSD records
        .txt(
            "_dmarc.npdom.com",
            "v=DMARC1; p=none; sp=quarantine; np=reject",
        )
        .a("real.npdom.com", "192.0.2.80")
        .txt("_dmarc.bank", "v=DMARC1; p=reject; psd=y")
        .mx("example.bank", 10, "mx.example.bank")
        .txt("_dmarc.museum", "v=DMARC1; p=reject")
        .servfail("spfbroken.com")
        .txt("spfslow.com", "v=spf1 include:_spf.slow.com -all")
        .hang("_spf.slow.com")
        .servfail("_dmarc.broken.com")
        .hang("_dmarc.slow.com")
        .txt("softfail.com", "v=spf1 ~all")
        .txt("neutral.com", "v=spf1 ?all")
        // an SPF include chain longer than the 10-lookup limit
        .txt("loop.com", "v=spf1 include:l1.loop.com -all");
    for i in 1..=12 {
        z.txt(
            &format!("l{i}.loop.com"),
            &format!("v=spf1 include:l{}.loop.com -all", i + 1),
        );
    }
    z.txt("l13.loop.com", "v=spf1 +all");
    // ARC
    z.txt("arc._domainkey.gw.example", &arc.dns_record());
    // DNSBL / RHSBL / DNSWL
    z.a("2.0.0.127.bl.test", "127.0.0.2")
        .txt("2.0.0.127.bl.test", "test listing")
        .a("66.2.0.192.bl.test", "127.0.0.2")
        .a("66.2.0.192.bl.test", "127.0.0.4")
        .txt(
            "66.2.0.192.bl.test",
            "listed: see https://bl.test/192.0.2.66",
        )
        .a(
            "6.6.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.test",
            "127.0.0.3",
        )
        .a("66.2.0.192.refuse.test", "127.255.255.254")
        .a("10.2.0.192.wl.test", "127.0.10.2")
        .a("spammer.com.dbl.test", "127.0.1.2")
        .txt("spammer.com.dbl.test", "spam domain")
        .hang("slow.test")
        // sender_mx
        .mx("nullmx.com", 0, ".")
        .a("aonly.com", "192.0.2.20")
        .txt("txtonly.com", "just text");
    for i in 0..4 {
        z.a(&format!("66.2.0.192.zone{i}.test"), "127.0.0.2");
    }
    z
}
