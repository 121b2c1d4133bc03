//! Escape attempts against the script sandbox: each is refused with a clear
//! error (or, for the verdict tricks, the verdict stands), the client gets
//! the hook's error reply (421 at HELO), and — since states are pooled —
//! the next script run in the same daemon still sees intact libraries.

mod common;
use common::*;

use serde_json::json;
use sluice::config::Config;
use sluice::policy::{test_input, Hook, HookVerdict, PolicyEngine};

/// What an attempt must end in.
enum Expect {
    /// A script error whose message contains this.
    Error(&'static str),
    /// A reply with this code (the verdict the script gave before its trick).
    Code(u16),
}

/// (HELO name, code, expected outcome).
const ATTEMPTS: &[(&str, &str, Expect)] = &[
    (
        "mt-rawset",
        r#"rawset(getmetatable(""), "__index", {})"#,
        Expect::Error("the string metatable is read-only"),
    ),
    (
        "mt-assign",
        r#"getmetatable("").__index = {}"#,
        Expect::Error("the string metatable is read-only"),
    ),
    (
        "mt-deep",
        r#"getmetatable("").__index.upper = nil"#,
        Expect::Error("is read-only (assignment to 'upper')"),
    ),
    (
        "lib-assign",
        "string.upper = nil",
        Expect::Error("string is read-only (assignment to 'upper')"),
    ),
    (
        "lib-rawset",
        r#"rawset(string, "upper", nil)"#,
        Expect::Error("rawset: string is read-only"),
    ),
    (
        "lib-table-insert",
        "table.insert(math, 1)",
        Expect::Error("math is read-only"),
    ),
    (
        "lib-setmetatable",
        "setmetatable(string, {})",
        Expect::Error("protected metatable"),
    ),
    (
        "api-assign",
        "json.encode = function() return 'x' end",
        Expect::Error("json is read-only"),
    ),
    (
        "load-global",
        r#"load("os.time = nil")()"#,
        Expect::Error("os is read-only"),
    ),
    (
        "package-loaded",
        "package.loaded.string = {}",
        Expect::Error("read-only"),
    ),
    (
        "module-assign",
        r#"require("mymod").f = nil"#,
        Expect::Error("mymod is read-only"),
    ),
    (
        "module-nested",
        r#"require("mymod").conf.limit = 0"#,
        Expect::Error("mymod.conf is read-only"),
    ),
    (
        "env-metatable",
        "getmetatable(_ENV).__index.string = nil",
        Expect::Error("attempt to index a boolean value"),
    ),
    (
        "os-execute",
        r#"os.execute("id")"#,
        Expect::Error("attempt to call a nil value (field 'execute')"),
    ),
    (
        "os-getenv",
        r#"os.getenv("HOME")"#,
        Expect::Error("field 'getenv'"),
    ),
    (
        "io",
        r#"io.open("/etc/passwd")"#,
        Expect::Error("global 'io'"),
    ),
    ("debug", "debug.sethook()", Expect::Error("global 'debug'")),
    (
        "loadlib",
        r#"package.loadlib("libc.so.6", "system")"#,
        Expect::Error("field 'loadlib'"),
    ),
    (
        "dofile",
        r#"dofile("/etc/passwd")"#,
        Expect::Error("global 'dofile'"),
    ),
    (
        "require-path",
        r#"require("../../etc/passwd")"#,
        Expect::Error("is not a module name"),
    ),
    (
        "string-dump",
        "load(string.dump(print))",
        Expect::Error("field 'dump'"),
    ),
    (
        "bytecode-mode",
        r#"load("\27LuaT", "x", "b")"#,
        Expect::Error("only text chunks may be loaded"),
    ),
    (
        "bytecode-default",
        r#"local f, e = load("\27LuaT\0") if f then Accept() end error(e)"#,
        Expect::Error("attempt to load a binary chunk"),
    ),
    (
        "gc-finalizer",
        "setmetatable({}, {__gc = function() while true do end end})",
        Expect::Error("__gc metamethods are not allowed"),
    ),
    (
        "collectgarbage",
        r#"collectgarbage("stop")"#,
        Expect::Error("is not allowed"),
    ),
    (
        "cpu-loop",
        "while true do end",
        Expect::Error("instruction limit exceeded"),
    ),
    (
        "cpu-pcall",
        "pcall(function() while true do end end) Accept()",
        Expect::Error("instruction limit exceeded"),
    ),
    (
        "cpu-coroutine",
        "local co = coroutine.wrap(function() while true do end end) pcall(co) Accept()",
        Expect::Error("instruction limit exceeded"),
    ),
    (
        "pattern-find",
        r#"string.rep("a", 30000):find(".-.-.-.-b")"#,
        Expect::Error("instruction limit exceeded"),
    ),
    (
        "pattern-gsub",
        r#"string.rep("a", 20000):gsub(".-.-.-b", "")"#,
        Expect::Error("in a string pattern"),
    ),
    (
        "pattern-gmatch",
        r#"for x in string.rep("a", 20000):gmatch(".-.-.-b") do end"#,
        Expect::Error("in a string pattern"),
    ),
    (
        "plain-find-loop",
        r#"local s = ("x"):rep(8 << 20) for i = 1, 100000 do s:find("y", 1, true) end"#,
        Expect::Error("instruction limit exceeded"),
    ),
    (
        "memory-table",
        r#"local t = {} for i = 1, 1e9 do t[i] = ("x"):rep(1000) .. i end"#,
        Expect::Error("memory"),
    ),
    (
        "memory-rep",
        r#"local s = ("x"):rep(1 << 30)"#,
        Expect::Error("memory"),
    ),
    (
        "memory-pcall",
        r#"pcall(function() local s = ("x"):rep(1 << 30) end) Accept()"#,
        Expect::Error("memory"),
    ),
    // A verdict ends the run even inside a coroutine or pcall: nothing after
    // it (the Accept) runs.
    (
        "verdict-coroutine",
        r#"local co = coroutine.wrap(function() Reject("from a coroutine") end) pcall(co) Accept()"#,
        Expect::Code(550),
    ),
    (
        "verdict-pcall",
        r#"pcall(Reject, "inside pcall") Accept()"#,
        Expect::Code(550),
    ),
    (
        "verdict-xpcall",
        r#"xpcall(function() Reject("inside xpcall") end, function(e) return e end) Accept()"#,
        Expect::Code(550),
    ),
];

/// Runs after every attempt: the shared libraries must be intact.
const CANARY: &str = r##"
  local problems = {}
  local function want(ok, what) if not ok then problems[#problems + 1] = what end end
  want(("abc"):upper() == "ABC", "string methods")
  want(string.upper ~= nil and string.find ~= nil, "string table")
  want(getmetatable("").__index.upper ~= nil, "string metatable")
  want(({("a,b"):find(",")})[1] == 2, "string.find")
  want(("x1y2"):gsub("%d", "#") == "x#y#", "string.gsub")
  want(json.encode ~= nil and os.time ~= nil and math.floor ~= nil, "libraries")
  want(require("mymod").f() == 1 and require("mymod").conf.limit == 10, "module")
  want(package.loaded.string ~= nil, "package.loaded")
  local n = 0 for _ in pairs(string) do n = n + 1 end
  want(n > 10, "pairs(string)")
  want(#require("mymod").list == 3, "#module.list")
  if #problems > 0 then Reject("canary: " .. table.concat(problems, ", ")) end
"##;

fn helo_script() -> String {
    let mut s = String::from("local host = arguments.host\n");
    for (i, (name, code, _)) in ATTEMPTS.iter().enumerate() {
        let kw = if i == 0 { "if" } else { "elseif" };
        s.push_str(&format!("{kw} host == {name:?} then\n  {code}\n"));
    }
    s.push_str("elseif host == \"canary\" then\n");
    s.push_str(CANARY);
    s.push_str("\nend\n");
    s
}

/// `[scripts]` with the helo script and a lib dir holding `mymod`.
fn scripts_toml(dir: &std::path::Path) -> String {
    let lib = dir.join("lib");
    std::fs::create_dir_all(&lib).unwrap();
    std::fs::write(
        lib.join("mymod.lua"),
        "return {f = function() return 1 end, conf = {limit = 10}, list = {1, 2, 3}}\n",
    )
    .unwrap();
    let helo = dir.join("helo.lua");
    std::fs::write(&helo, helo_script()).unwrap();
    format!("[scripts]\nhelo = {helo:?}\nlib_path = [{lib:?}]\ninstruction_limit = 2000000\n")
}

#[tokio::test]
async fn every_escape_attempt_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config::from_toml_str(&scripts_toml(dir.path())).unwrap();
    let engine = PolicyEngine::load(&cfg).unwrap();
    let run = |host: &str| {
        let input = test_input(Hook::Helo, &json!({"arguments": {"host": host}}), None).unwrap();
        let engine = engine.clone();
        async move { engine.run(Hook::Helo, input).await }
    };
    let canary = run("canary").await;
    assert!(
        matches!(canary.verdict, HookVerdict::Pass { .. }),
        "canary before: {:?} {:?}",
        canary.verdict,
        canary.error
    );
    for (name, _, expect) in ATTEMPTS {
        let o = run(name).await;
        match expect {
            Expect::Error(text) => {
                let err = o.error.clone().unwrap_or_default();
                assert!(
                    err.contains(text),
                    "{name}: wanted {text:?}, got {err:?} ({:?})",
                    o.verdict
                );
                // The script's line is named (line 1 is `local host = …`).
                assert!(
                    err.contains("helo.lua:")
                        || err.contains("limit exceeded")
                        || err.contains("memory"),
                    "{name}: no script position in {err:?}"
                );
                match &o.verdict {
                    HookVerdict::Defer { reply, disconnect } => {
                        assert_eq!(reply.code, 421, "{name}");
                        assert!(*disconnect, "{name}");
                    }
                    other => panic!("{name}: {other:?}"),
                }
            }
            Expect::Code(code) => {
                assert!(o.error.is_none(), "{name}: {:?}", o.error);
                match &o.verdict {
                    HookVerdict::Reject { reply, .. } => assert_eq!(reply.code, *code, "{name}"),
                    other => panic!("{name}: {other:?}"),
                }
            }
        }
        let c = run("canary").await;
        assert!(
            matches!(c.verdict, HookVerdict::Pass { .. }),
            "after {name}: {:?} {:?}",
            c.verdict,
            c.error
        );
    }
}

#[tokio::test]
async fn escape_attempts_over_smtp_get_421_and_the_daemon_stays_up() {
    let dir = tempfile::tempdir().unwrap();
    let srv = TestServer::start(&scripts_toml(dir.path())).await;
    for (name, _, expect) in ATTEMPTS {
        let mut c = srv.client().await;
        c.expect("220").await;
        match expect {
            Expect::Error(_) => {
                c.cmd(&format!("EHLO {name}"), "421 4.3.0").await;
                assert!(c.closed().await, "{name}: connection left open");
            }
            Expect::Code(code) => {
                c.cmd(&format!("EHLO {name}"), &code.to_string()).await;
            }
        }
        let mut c = srv.client().await;
        c.expect("220").await;
        c.cmd("EHLO canary", "250").await;
    }
    // And mail still flows.
    let mut c = srv.client().await;
    c.expect("220").await;
    c.cmd("EHLO canary", "250").await;
    c.cmd("MAIL FROM:<a@example.net>", "250").await;
}
