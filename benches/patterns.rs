//! Lua string patterns: Lua's C matcher vs Sluice's budgeted one
//! (`policy::pattern`, installed by the sandbox), on calls scripts make.
//!
//!   cargo bench --bench patterns

use mlua::{Lua, Table};

const CASES: &[(&str, &str)] = &[
    ("find plain", r#"return lib.find(s, "example", 1, true)"#),
    ("find %w+@", r#"return lib.find(s, "[%w.]+@[%w.]+")"#),
    ("match anchored", r#"return lib.match(s, "^(%S+)%s")"#),
    ("match capture", r#"return lib.match(s, "<([^>]+)>")"#),
    ("gsub %s+", r#"return lib.gsub(s, "%s+", " ")"#),
    (
        "gmatch words",
        r#"local n = 0 for w in lib.gmatch(s, "%a+") do n = n + 1 end return n"#,
    ),
];

fn main() {
    let lua = Lua::new();
    let mine: Table = lua.create_table().unwrap();
    sluice::policy::api::strings::install(&lua, &mine).unwrap();
    let s = "Received: from mail.example.org (mail.example.org [192.0.2.7]) by mx.example.net with ESMTPS id 123 for <bob@example.net>; Tue, 1 Dec 2026 10:00:00 +0000";
    lua.globals().set("s", s).unwrap();
    // `cargo test --all-targets` runs this once as a smoke test: few calls.
    let n = if std::env::args().any(|a| a == "--bench") {
        200_000
    } else {
        200
    };
    println!(
        "{:<16} {:>12} {:>12} {:>7}",
        "call", "C calls/s", "ours/s", "ratio"
    );
    for (name, body) in CASES {
        let run = |lib: Table| -> f64 {
            lua.globals().set("lib", lib).unwrap();
            let f = lua
                .load(format!("local t = os.clock() for i = 1, {n} do (function() {body} end)() end return os.clock() - t"))
                .into_function()
                .unwrap();
            let secs: f64 = f.call(()).unwrap();
            n as f64 / secs
        };
        let c = run(lua.globals().get::<Table>("string").unwrap());
        let ours = run(mine.clone());
        println!("{name:<16} {c:>12.0} {ours:>12.0} {:>7.2}", ours / c);
    }
}
