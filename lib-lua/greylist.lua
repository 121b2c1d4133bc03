-- greylist.lua — greylisting on the shared state store (memory.*), so a
-- triplet first seen on one node passes on another when [state] backend
-- = "redis".
--
--   local greylist = require("greylist")
--   if greylist.check({ip = connection.remoteip, sender = transaction.sender,
--                      recipient = arguments.recipient}) == "defer" then
--     Defer("Greylisted, please try again later", {reply_codes = {code = 451, enhanced = {4, 7, 1}}})
--   end
--
-- check(o) → "pass" or "defer". Options (defaults):
--   ip, sender, recipient  the triplet (required; sender "" = null sender)
--   delay = 300            seconds a new triplet must wait before a retry passes
--   retry_window = 86400   seconds after the first attempt a retry is still accepted
--   expire = 30*86400      seconds a passed triplet (and an auto-allowed network) stays known
--   netmask4 = 24, netmask6 = 64  the client network the triplet is keyed on
--   auto_allow = 5         after this many passed triplets the network passes
--                          everything for `expire` (0 = never)
--   prefix = "greylist:"   memory key prefix
-- Keys (memory.*, under [state] prefix m:): greylist:t:NET|SENDER|RCPT =
-- {first = unix time, passed = bool}; greylist:n:NET = passed triplets.
-- Every "defer" (and auto-allow pass) is noted with state.note, so the
-- history record of the refusal and `sluice trace` say which entry decided.

local M = {}

local function opt(o, k, default)
  local v = o[k]
  if v == nil then return default end
  return v
end

function M.key(o)
  local net = ip.network(o.ip, opt(o, "netmask4", 24), opt(o, "netmask6", 64)) or o.ip
  local prefix = opt(o, "prefix", "greylist:")
  return prefix .. "t:" .. net .. "|" .. string.lower(o.sender) .. "|" .. string.lower(o.recipient),
         prefix .. "n:" .. net, net
end

function M.check(o)
  assert(type(o) == "table", "greylist.check: expected an options table")
  assert(type(o.ip) == "string", "greylist.check: ip is required")
  assert(type(o.sender) == "string", "greylist.check: sender is required")
  assert(type(o.recipient) == "string", "greylist.check: recipient is required")
  local delay = opt(o, "delay", 300)
  local window = opt(o, "retry_window", 86400)
  local expire = opt(o, "expire", 30 * 86400)
  local auto = opt(o, "auto_allow", 5)
  local tkey, nkey, net = M.key(o)

  if auto > 0 then
    local n = memory.get(nkey)
    if type(n) == "number" and n >= auto then
      return "pass"
    end
  end

  local now = os.time()
  local e = memory.get(tkey)
  if type(e) ~= "table" or type(e.first) ~= "number" then
    memory.set(tkey, {first = now, passed = false}, delay + window)
    state.note("greylist " .. tkey .. ": first seen, retry after " .. delay .. "s")
    return "defer"
  end
  if e.passed then
    return "pass"
  end
  local age = now - e.first
  if age < delay then
    state.note("greylist " .. tkey .. ": seen " .. age .. "s ago, retry after " .. delay .. "s")
    return "defer"
  end
  memory.set(tkey, {first = e.first, passed = true}, expire)
  if auto > 0 then
    memory.incr(nkey, 1, expire)
  end
  return "pass"
end

return M
