//! `string.find`, `string.match`, `string.gmatch` and `string.gsub` on
//! [`crate::policy::pattern`], so a pattern's backtracking is paid from the
//! run's instruction budget (Lua's C matcher runs unseen by the VM hook).
//! Same arguments, results and error messages as Lua 5.4; a plain `find`
//! costs one instruction per 64 bytes searched.
//!
//! Installed into the `string` table by the sandbox before it is made
//! read-only; method calls (`s:find(…)`) reach them through the string
//! metatable. Owns only the conversion between Lua values and the matcher.

use mlua::{Function, Integer, Lua, MultiValue, String as LuaString, Table, Value};

use super::{RunState, Termination};
use crate::policy::pattern::{self, Capture, Matcher, PatternError};
use crate::policy::sandbox::DEFAULT_INSTRUCTION_LIMIT;

/// Bytes of plain search that cost one instruction.
const PLAIN_BYTES_PER_STEP: u64 = 64;

pub fn install(lua: &Lua, string: &Table) -> mlua::Result<()> {
    string.raw_set(
        "find",
        lua.create_function(
            |lua, (s, p, init, plain): (LuaString, LuaString, Option<Integer>, Value)| {
                find_aux(lua, &s, &p, init, plain.as_boolean().unwrap_or(false), true)
            },
        )?,
    )?;
    string.raw_set(
        "match",
        lua.create_function(
            |lua, (s, p, init): (LuaString, LuaString, Option<Integer>)| {
                find_aux(lua, &s, &p, init, false, false)
            },
        )?,
    )?;
    string.raw_set("gmatch", lua.create_function(gmatch)?)?;
    string.raw_set("gsub", lua.create_function(gsub)?)?;
    Ok(())
}

/// Steps the running hook may still spend.
fn remaining(lua: &Lua) -> u64 {
    match lua.app_data_ref::<RunState>() {
        Some(rs) => rs.instruction_limit.saturating_sub(rs.instructions),
        None => DEFAULT_INSTRUCTION_LIMIT,
    }
}

/// Add `steps` to the run's count.
fn charge(lua: &Lua, steps: u64) {
    if let Some(mut rs) = lua.app_data_mut::<RunState>() {
        rs.instructions += steps;
    }
}

/// A matcher error as the Lua error the script sees; running out of budget
/// ends the run like the instruction hook does.
fn lua_error(lua: &Lua, e: PatternError) -> mlua::Error {
    match e {
        PatternError::Malformed(m) => mlua::Error::runtime(m),
        PatternError::Budget => {
            let limit = lua
                .app_data_ref::<RunState>()
                .map(|rs| rs.instruction_limit)
                .unwrap_or(DEFAULT_INSTRUCTION_LIMIT);
            super::terminate(
                lua,
                Termination::Fatal(format!(
                    "instruction limit exceeded ({limit} instructions) in a string pattern"
                )),
            )
        }
    }
}

fn capture_value(lua: &Lua, src: &[u8], c: Capture) -> mlua::Result<Value> {
    Ok(match c {
        Capture::Span(a, b) => Value::String(lua.create_string(&src[a..b])?),
        Capture::Position(p) => Value::Integer(p as Integer),
    })
}

fn captures(
    lua: &Lua,
    m: &Matcher<'_>,
    s: usize,
    e: usize,
    whole: bool,
) -> mlua::Result<MultiValue> {
    let caps = m.captures(s, e, whole).map_err(|e| lua_error(lua, e))?;
    caps.into_iter()
        .map(|c| capture_value(lua, m.src(), c))
        .collect()
}

fn find_aux(
    lua: &Lua,
    s: &LuaString,
    p: &LuaString,
    init: Option<Integer>,
    plain: bool,
    find: bool,
) -> mlua::Result<MultiValue> {
    let src = s.as_bytes();
    let pat = p.as_bytes();
    let init = pattern::start_index(init.unwrap_or(1), src.len());
    if init > src.len() {
        return Ok(MultiValue::from_iter([Value::Nil]));
    }
    if find && (plain || pattern::is_plain(&pat)) {
        let steps = (src.len() - init) as u64 / PLAIN_BYTES_PER_STEP;
        if steps > remaining(lua) {
            return Err(lua_error(lua, PatternError::Budget));
        }
        charge(lua, steps);
        return Ok(match pattern::find_plain(&src, &pat, init) {
            Some(i) => MultiValue::from_iter([
                Value::Integer(i as Integer + 1),
                Value::Integer((i + pat.len()) as Integer),
            ]),
            None => MultiValue::from_iter([Value::Nil]),
        });
    }
    let mut m = Matcher::new(&src, &pat, remaining(lua));
    let found = pattern::search(&mut m, init);
    charge(lua, m.steps);
    match found.map_err(|e| lua_error(lua, e))? {
        Some((a, b)) if find => {
            let mut out = MultiValue::from_iter([
                Value::Integer(a as Integer + 1),
                Value::Integer(b as Integer),
            ]);
            out.extend(captures(lua, &m, a, b, false)?);
            Ok(out)
        }
        Some((a, b)) => captures(lua, &m, a, b, true),
        None => Ok(MultiValue::from_iter([Value::Nil])),
    }
}

fn gmatch(
    lua: &Lua,
    (s, p, init): (LuaString, LuaString, Option<Integer>),
) -> mlua::Result<Function> {
    let len = s.as_bytes().len();
    let start = pattern::start_index(init.unwrap_or(1), len);
    // Past the end: the iterator finds nothing (Lua starts it after the end).
    let pos = std::cell::Cell::new(if start > len { len + 1 } else { start });
    let last = std::cell::Cell::new(None::<usize>);
    lua.create_function(move |lua, ()| {
        let src = s.as_bytes();
        let pat = p.as_bytes();
        let mut m = Matcher::new(&src, &pat, remaining(lua));
        let mut at = pos.get();
        let mut found = Ok(None);
        while at <= src.len() {
            match m.match_at(at, 0) {
                Ok(Some(e)) if Some(e) != last.get() => {
                    found = Ok(Some((at, e)));
                    break;
                }
                Ok(_) => at += 1,
                Err(e) => {
                    found = Err(e);
                    break;
                }
            }
        }
        charge(lua, m.steps);
        match found.map_err(|e| lua_error(lua, e))? {
            Some((a, e)) => {
                pos.set(e);
                last.set(Some(e));
                captures(lua, &m, a, e, true)
            }
            None => {
                pos.set(src.len() + 1);
                Ok(MultiValue::new())
            }
        }
    })
}

fn gsub(
    lua: &Lua,
    (subject, p, repl, max): (Value, LuaString, Value, Option<Integer>),
) -> mlua::Result<(Value, Integer)> {
    let s: LuaString = match &subject {
        Value::String(s) => s.clone(),
        other => match lua.coerce_string(other.clone())? {
            Some(s) => s,
            None => {
                return Err(mlua::Error::runtime(format!(
                    "bad argument #1 to 'gsub' (string expected, got {})",
                    other.type_name()
                )))
            }
        },
    };
    if !matches!(
        repl,
        Value::Integer(_)
            | Value::Number(_)
            | Value::String(_)
            | Value::Function(_)
            | Value::Table(_)
    ) {
        return Err(mlua::Error::runtime(format!(
            "bad argument #3 to 'gsub' (string/function/table expected, got {})",
            repl.type_name()
        )));
    }
    let repl_text = match &repl {
        Value::Function(_) | Value::Table(_) => None,
        other => lua.coerce_string(other.clone())?,
    };
    let src = s.as_bytes();
    let pat = p.as_bytes();
    let max = max.unwrap_or(src.len() as Integer + 1);
    let (anchor, p0) = if pat.first() == Some(&b'^') {
        (true, 1)
    } else {
        (false, 0)
    };
    let mut out: Vec<u8> = Vec::new();
    let mut changed = false;
    let mut n: Integer = 0;
    let mut at = 0usize;
    let mut last = None;
    let mut m = Matcher::new(&src, &pat, remaining(lua));
    while n < max {
        let found = m.match_at(at, p0).map_err(|e| {
            charge(lua, m.steps);
            lua_error(lua, e)
        })?;
        match found {
            Some(e) if Some(e) != last => {
                n += 1;
                // Callbacks run Lua code that counts itself: settle first.
                charge(lua, m.steps);
                m.steps = 0;
                changed |= add_value(lua, &m, &mut out, at, e, &repl, repl_text.as_ref())?;
                m.limit = remaining(lua);
                at = e;
                last = Some(e);
            }
            _ if at < src.len() => {
                out.push(src[at]);
                at += 1;
            }
            _ => break,
        }
        if anchor {
            break;
        }
    }
    charge(lua, m.steps);
    if !changed {
        return Ok((subject, n));
    }
    out.extend_from_slice(&src[at..]);
    Ok((Value::String(lua.create_string(&out)?), n))
}

/// Append the replacement of the match `s..e`; false when the original
/// text was kept (a function or table gave nil/false).
fn add_value(
    lua: &Lua,
    m: &Matcher<'_>,
    out: &mut Vec<u8>,
    s: usize,
    e: usize,
    repl: &Value,
    repl_text: Option<&LuaString>,
) -> mlua::Result<bool> {
    let src = m.src();
    let value = match repl {
        Value::Function(f) => f
            .call::<MultiValue>(captures(lua, m, s, e, true)?)?
            .into_iter()
            .next()
            .unwrap_or(Value::Nil),
        Value::Table(t) => {
            let key = m.capture(0, s, e).map_err(|er| lua_error(lua, er))?;
            t.get::<Value>(capture_value(lua, src, key)?)?
        }
        _ => {
            let text = repl_text.expect("string or number replacement");
            add_text(lua, m, out, s, e, &text.as_bytes())?;
            return Ok(true);
        }
    };
    match value {
        Value::Nil | Value::Boolean(false) => {
            out.extend_from_slice(&src[s..e]);
            Ok(false)
        }
        v @ (Value::String(_) | Value::Integer(_) | Value::Number(_)) => {
            let text = lua.coerce_string(v)?.expect("a string or number");
            out.extend_from_slice(&text.as_bytes());
            Ok(true)
        }
        other => Err(mlua::Error::runtime(format!(
            "invalid replacement value (a {})",
            other.type_name()
        ))),
    }
}

/// A replacement string: `%0`–`%9` and `%%`.
fn add_text(
    lua: &Lua,
    m: &Matcher<'_>,
    out: &mut Vec<u8>,
    s: usize,
    e: usize,
    text: &[u8],
) -> mlua::Result<()> {
    let src = m.src();
    let mut i = 0;
    while let Some(off) = memchr::memchr(b'%', &text[i..]) {
        out.extend_from_slice(&text[i..i + off]);
        let c = text.get(i + off + 1).copied();
        match c {
            Some(b'%') => out.push(b'%'),
            Some(b'0') => out.extend_from_slice(&src[s..e]),
            Some(d @ b'1'..=b'9') => {
                match m
                    .capture((d - b'1') as usize, s, e)
                    .map_err(|er| lua_error(lua, er))?
                {
                    Capture::Span(a, b) => out.extend_from_slice(&src[a..b]),
                    Capture::Position(p) => out.extend_from_slice(p.to_string().as_bytes()),
                }
            }
            _ => {
                return Err(mlua::Error::runtime(
                    "invalid use of '%' in replacement string",
                ))
            }
        }
        i += off + 2;
    }
    out.extend_from_slice(&text[i..]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use mlua::{Lua, Table};
    use rand::{Rng, SeedableRng};

    /// Calls `f(s, p)` with Lua's own `string` and with ours; returns both
    /// results rendered as text.
    const HARNESS: &str = r##"
local lib, op, s, p = ...
local function render(ok, ...)
  local out = {tostring(ok)}
  if not ok then
    -- Messages: ours come wrapped by mlua ("runtime error: …").
    local m = tostring((...))
    -- Lua adds the chunk position when gmatch's iterator fails in a loop.
    m = m:gsub("^runtime error: ", ""):gsub("\nstack traceback:.*", ""):gsub("^[^:]+:%d+:%d+: ", "")
    return "error: " .. m
  end
  for i = 1, select("#", ...) do
    local v = select(i, ...)
    out[#out + 1] = type(v) .. ":" .. tostring(v)
  end
  return table.concat(out, " ")
end
if op == "find" then return render(pcall(lib.find, s, p))
elseif op == "find3" then return render(pcall(lib.find, s, p, 3))
elseif op == "findneg" then return render(pcall(lib.find, s, p, -4))
elseif op == "match" then return render(pcall(lib.match, s, p))
elseif op == "gmatch" then
  return render(pcall(function()
    local all, n = {}, 0
    for a, b in lib.gmatch(s, p) do
      n = n + 1
      all[#all + 1] = tostring(a) .. "," .. tostring(b)
      if n > 50 then break end
    end
    return table.concat(all, ";")
  end))
elseif op == "gsub" then return render(pcall(lib.gsub, s, p, "<%0>"))
elseif op == "gsub1" then return render(pcall(lib.gsub, s, p, "[%1]", 2))
elseif op == "gsubt" then return render(pcall(lib.gsub, s, p, {a = "A", ["()"] = 1, b = false}))
elseif op == "gsubf" then
  return render(pcall(lib.gsub, s, p, function(x, y) if x == "b" then return nil end return (y or x) .. "!" end))
end
"##;

    fn both(lua: &Lua, mine: &Table, op: &str, s: &str, p: &str) -> (String, String) {
        let f = lua.load(HARNESS).into_function().unwrap();
        let c: String = f
            .call((lua.globals().get::<Table>("string").unwrap(), op, s, p))
            .unwrap();
        let r: String = f.call((mine.clone(), op, s, p)).unwrap();
        (c, r)
    }

    fn setup() -> (Lua, Table) {
        let lua = Lua::new();
        let mine = lua.create_table().unwrap();
        super::install(&lua, &mine).unwrap();
        (lua, mine)
    }

    const OPS: &[&str] = &[
        "find", "find3", "findneg", "match", "gmatch", "gsub", "gsub1", "gsubt", "gsubf",
    ];

    #[test]
    fn same_as_lua_on_chosen_cases() {
        let (lua, mine) = setup();
        let cases: &[(&str, &str)] = &[
            ("hello world", "o"),
            ("hello world", "(o)(r?)"),
            ("hello world", "%w+"),
            ("  trim me  ", "^%s*(.-)%s*$"),
            ("key = value", "(%w+)%s*=%s*(%w+)"),
            ("a,b,,c", "([^,]*)"),
            ("THE (quick) fox", "%f[%a]%a+"),
            ("f(a(b)c)d", "%b()"),
            ("abcabc", "(abc)%1"),
            ("abc", "()b()"),
            ("abc", ""),
            ("", ""),
            ("", "x*"),
            ("abc", "$"),
            ("a$b", "$b"),
            ("^a", "^^a"),
            ("x]y", "[]]"),
            ("a-b", "[a%-]+"),
            ("tab\there\x0bv", "%s"),
            ("Hello", "%u%l+"),
            ("0x1F", "%x+"),
            ("abc", "%"),
            ("abc", "[a"),
            ("abc", "(a"),
            ("abc", "a)"),
            ("abc", "%1"),
            ("abc", "%f"),
            ("abc", "%bx"),
            ("aaa", "a-"),
            ("aaa", "a-$"),
            ("bab", "b*"),
            ("bab", "a?"),
            ("user@example.org", "^([^@]+)@(.+)$"),
            ("1.2.3.4", "^(%d+)%.(%d+)%.(%d+)%.(%d+)$"),
        ];
        for (s, p) in cases {
            for op in OPS {
                let (c, r) = both(&lua, &mine, op, s, p);
                assert_eq!(c, r, "{op}({s:?}, {p:?})");
            }
        }
    }

    #[test]
    fn same_as_lua_on_random_patterns() {
        let (lua, mine) = setup();
        let tokens = [
            "a", "b", ".", "%a", "%d", "%s", "%W", "[ab]", "[^a]", "[a-c]", "[%d%]]", "(", ")",
            "()", "%b()", "%f[%a]", "%f[^%w]", "*", "+", "-", "?", "^", "$", "%1", "%2", "%", "x",
            "%.", "[", "]",
        ];
        let alphabet = b"ab() x1.-]%A";
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed_1a7e);
        for _ in 0..2500 {
            let plen = rng.gen_range(1..=6);
            let p: String = (0..plen)
                .map(|_| tokens[rng.gen_range(0..tokens.len())])
                .collect();
            let slen = rng.gen_range(0..=10);
            let s: String = (0..slen)
                .map(|_| alphabet[rng.gen_range(0..alphabet.len())] as char)
                .collect();
            let op = OPS[rng.gen_range(0..OPS.len())];
            let (c, r) = both(&lua, &mine, op, &s, &p);
            assert_eq!(c, r, "{op}({s:?}, {p:?})");
        }
    }
}
