//! A minimal MaxMind DB writer (format 2.0, IPv6 tree, 24-bit records) for
//! test databases: enough for maxminddb to read country and ASN records.
#![allow(dead_code)]

use std::net::IpAddr;

pub enum V {
    Str(String),
    U16(u16),
    U32(u32),
    U64(u64),
    Map(Vec<(String, V)>),
    Array(Vec<V>),
}

pub fn s(x: &str) -> V {
    V::Str(x.to_string())
}

pub fn map(pairs: Vec<(&str, V)>) -> V {
    V::Map(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

fn control(out: &mut Vec<u8>, ty: u8, size: usize) {
    let (base, extended) = if ty > 7 {
        (0u8, Some(ty - 7))
    } else {
        (ty << 5, None)
    };
    let (size_bits, extra): (u8, Vec<u8>) = if size < 29 {
        (size as u8, vec![])
    } else if size < 285 {
        (29, vec![(size - 29) as u8])
    } else if size < 65_821 {
        let v = size - 285;
        (30, vec![(v >> 8) as u8, v as u8])
    } else {
        let v = size - 65_821;
        (31, vec![(v >> 16) as u8, (v >> 8) as u8, v as u8])
    };
    out.push(base | size_bits);
    if let Some(e) = extended {
        out.push(e);
    }
    out.extend(extra);
}

fn uint(out: &mut Vec<u8>, ty: u8, v: u64) {
    let bytes = v.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    control(out, ty, 8 - skip);
    out.extend_from_slice(&bytes[skip..]);
}

pub fn encode(out: &mut Vec<u8>, v: &V) {
    match v {
        V::Str(x) => {
            control(out, 2, x.len());
            out.extend_from_slice(x.as_bytes());
        }
        V::U16(x) => uint(out, 5, *x as u64),
        V::U32(x) => uint(out, 6, *x as u64),
        V::U64(x) => uint(out, 9, *x),
        V::Map(pairs) => {
            control(out, 7, pairs.len());
            for (k, v) in pairs {
                encode(out, &V::Str(k.clone()));
                encode(out, v);
            }
        }
        V::Array(items) => {
            control(out, 11, items.len());
            for v in items {
                encode(out, v);
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Rec {
    Empty,
    Node(usize),
    Data(usize),
}

/// Build a database from (network, prefix length, record) entries; IPv4
/// networks go under ::/96. Networks must not overlap.
pub fn build(database_type: &str, entries: Vec<(&str, u8, V)>) -> Vec<u8> {
    let mut nodes: Vec<[Rec; 2]> = vec![[Rec::Empty, Rec::Empty]];
    let mut data = Vec::new();
    for (net, len, value) in entries {
        let ip: IpAddr = net.parse().unwrap();
        let (bits, len) = match ip {
            IpAddr::V4(v4) => (u32::from(v4) as u128, len as usize + 96),
            IpAddr::V6(v6) => (u128::from(v6), len as usize),
        };
        let offset = data.len();
        encode(&mut data, &value);
        let mut node = 0usize;
        for i in 0..len {
            let bit = ((bits >> (127 - i)) & 1) as usize;
            if i == len - 1 {
                nodes[node][bit] = Rec::Data(offset);
                break;
            }
            node = match nodes[node][bit] {
                Rec::Node(n) => n,
                Rec::Empty => {
                    nodes.push([Rec::Empty, Rec::Empty]);
                    let n = nodes.len() - 1;
                    nodes[node][bit] = Rec::Node(n);
                    n
                }
                Rec::Data(_) => panic!("overlapping networks"),
            };
        }
    }
    let count = nodes.len();
    let mut out = Vec::new();
    for n in &nodes {
        for r in n {
            let v = match *r {
                Rec::Empty => count,
                Rec::Node(i) => i,
                Rec::Data(off) => count + 16 + off,
            };
            out.extend_from_slice(&(v as u32).to_be_bytes()[1..]);
        }
    }
    out.extend_from_slice(&[0u8; 16]);
    out.extend_from_slice(&data);
    out.extend_from_slice(b"\xAB\xCD\xEFMaxMind.com");
    let meta = map(vec![
        ("binary_format_major_version", V::U16(2)),
        ("binary_format_minor_version", V::U16(0)),
        ("build_epoch", V::U64(1_700_000_000)),
        ("database_type", s(database_type)),
        ("description", map(vec![("en", s("Sluice test database"))])),
        ("ip_version", V::U16(6)),
        ("languages", V::Array(vec![s("en")])),
        ("node_count", V::U32(count as u32)),
        ("record_size", V::U16(24)),
    ]);
    encode(&mut out, &meta);
    out
}

/// A GeoLite2-Country style record.
pub fn country(iso: &str, name: &str, continent: &str) -> V {
    map(vec![
        (
            "continent",
            map(vec![
                ("code", s(continent)),
                ("names", map(vec![("en", s(continent))])),
            ]),
        ),
        (
            "country",
            map(vec![
                ("iso_code", s(iso)),
                ("names", map(vec![("en", s(name))])),
            ]),
        ),
    ])
}

/// A GeoLite2-ASN style record.
pub fn asn(number: u32, org: &str) -> V {
    map(vec![
        ("autonomous_system_number", V::U32(number)),
        ("autonomous_system_organization", s(org)),
    ])
}
