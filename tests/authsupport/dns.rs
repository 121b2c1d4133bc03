//! A real DNS server on 127.0.0.1 for the sender-authentication tests and
//! benchmark: hickory-server with one in-memory authority at the root (so
//! any name can be served), plus names that answer SERVFAIL and names whose
//! queries are never answered (a timeout). UDP and TCP on the same port.
#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hickory_server::authority::{Catalog, MessageResponseBuilder, ZoneType};
use hickory_server::proto::op::{Header, ResponseCode};
use hickory_server::proto::rr::rdata::{A, AAAA, MX, PTR, SOA, TXT};
use hickory_server::proto::rr::{LowerName, Name, RData, Record};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::store::in_memory::InMemoryAuthority;
use hickory_server::ServerFuture;

#[derive(Default)]
pub struct Zone {
    records: Vec<Record>,
    servfail: Vec<LowerName>,
    hang: Vec<LowerName>,
}

fn name(n: &str) -> Name {
    // Any octets are a valid label (RFC 2181 §11): SPF tests need names like
    // "foo:bar/baz.example.com" that hickory's text parser refuses.
    let mut n = Name::from_str(n)
        .or_else(|_| Name::from_labels(n.trim_end_matches('.').split('.').map(str::as_bytes)))
        .unwrap();
    n.set_fqdn(true);
    n
}

impl Zone {
    pub fn new() -> Zone {
        Zone::default()
    }

    fn add(&mut self, n: &str, data: RData) -> &mut Self {
        self.records.push(Record::from_rdata(name(n), 300, data));
        self
    }

    /// A TXT record; strings longer than 255 bytes are split.
    pub fn txt(&mut self, n: &str, value: &str) -> &mut Self {
        let chunks: Vec<String> = value
            .as_bytes()
            .chunks(255)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect();
        self.add(n, RData::TXT(TXT::new(chunks)))
    }

    /// A TXT record made of exactly these character-strings (a record
    /// split over several strings, RFC 7208 §3.3).
    pub fn txt_strings(&mut self, n: &str, strings: &[&str]) -> &mut Self {
        let v = strings.iter().map(|s| s.to_string()).collect();
        self.add(n, RData::TXT(TXT::new(v)))
    }

    pub fn a(&mut self, n: &str, ip: &str) -> &mut Self {
        match ip.parse::<IpAddr>().unwrap() {
            IpAddr::V4(v4) => self.add(n, RData::A(A(v4))),
            IpAddr::V6(v6) => self.add(n, RData::AAAA(AAAA(v6))),
        }
    }

    pub fn mx(&mut self, n: &str, pref: u16, exchange: &str) -> &mut Self {
        let ex = if exchange == "." {
            Name::root()
        } else {
            name(exchange)
        };
        self.add(n, RData::MX(MX::new(pref, ex)))
    }

    pub fn ptr(&mut self, ip: &str, target: &str) -> &mut Self {
        let ip: IpAddr = ip.parse().unwrap();
        let owner = Name::from(ip);
        self.records.push(Record::from_rdata(
            owner,
            300,
            RData::PTR(PTR(name(target))),
        ));
        self
    }

    /// Queries at or under `n` answer SERVFAIL.
    pub fn servfail(&mut self, n: &str) -> &mut Self {
        self.servfail.push(LowerName::new(&name(n)));
        self
    }

    /// Queries at or under `n` are never answered.
    pub fn hang(&mut self, n: &str) -> &mut Self {
        self.hang.push(LowerName::new(&name(n)));
        self
    }

    /// Serve the zone on a random loopback port (UDP and TCP).
    pub async fn start(&self) -> TestDns {
        let root = Name::root();
        let mut auth = InMemoryAuthority::empty(root.clone(), ZoneType::Primary, false);
        let soa = SOA::new(
            name("ns.test"),
            name("hostmaster.test"),
            1,
            3600,
            600,
            86400,
            60,
        );
        auth.upsert_mut(Record::from_rdata(root.clone(), 300, RData::SOA(soa)), 1);
        for r in &self.records {
            auth.upsert_mut(r.clone(), 1);
        }
        let mut catalog = Catalog::new();
        catalog.upsert(LowerName::new(&root), vec![Arc::new(auth)]);
        let queries = Arc::new(AtomicUsize::new(0));
        let handler = Handler {
            catalog,
            servfail: self.servfail.clone(),
            hang: self.hang.clone(),
            queries: queries.clone(),
        };
        // The UDP port is free, but the same TCP port may be some other
        // test's ephemeral connection port (seen in CI: EADDRINUSE): try
        // another pair, a bounded number of times.
        let mut pair = None;
        for _ in 0..50 {
            let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let addr = udp.local_addr().unwrap();
            if let Ok(tcp) = tokio::net::TcpListener::bind(addr).await {
                pair = Some((udp, addr, tcp));
                break;
            }
        }
        let (udp, addr, tcp) = pair.expect("no UDP+TCP port pair free on 127.0.0.1 in 50 tries");
        let mut server = ServerFuture::new(handler);
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(5));
        tokio::spawn(async move {
            let _ = server.block_until_done().await;
        });
        TestDns { addr, queries }
    }
}

pub struct TestDns {
    pub addr: SocketAddr,
    queries: Arc<AtomicUsize>,
}

impl TestDns {
    /// Queries received so far.
    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::Relaxed)
    }
}

struct Handler {
    catalog: Catalog,
    servfail: Vec<LowerName>,
    hang: Vec<LowerName>,
    queries: Arc<AtomicUsize>,
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        self.queries.fetch_add(1, Ordering::Relaxed);
        if let Ok(info) = request.request_info() {
            let qname = info.query.name();
            if self.hang.iter().any(|z| z.zone_of(qname)) {
                tokio::time::sleep(Duration::from_secs(30)).await;
                return ResponseInfo::from(*request.header());
            }
            if self.servfail.iter().any(|z| z.zone_of(qname)) {
                let resp = MessageResponseBuilder::from_message_request(request)
                    .error_msg(request.header(), ResponseCode::ServFail);
                return match response_handle.send_response(resp).await {
                    Ok(i) => i,
                    Err(_) => {
                        let mut h = Header::new();
                        h.set_response_code(ResponseCode::ServFail);
                        ResponseInfo::from(h)
                    }
                };
            }
        }
        self.catalog.handle_request(request, response_handle).await
    }
}
