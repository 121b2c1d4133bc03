-- axigen.lua — the runtime of Axigen policies compiled to Lua by Sluice
-- (src/policy/axigen). A generated hook script does
--
--   local ax = require("axigen").begin(_ENV, "rcptto", "policy/file")
--   ax:event("onRcptTo", function() ... end)
--   ax:finish()
--
-- and the code in between records the policy line it is at (ax.line = N),
-- reads and sets Axigen variables (ax:get/ax:set),
-- tests conditions (ax:is, ax:isCase, ax:match, ax:lessThan, …, ax:ipRange)
-- and calls predefined methods (ax:checkSPF(), ax:addHeader(), …).
--
-- State between hooks lives in `context.axigen` (plain data):
--   exports  exported custom variables (lowercase name → value)
--   session  variables that outlive one event: limits, switches, check
--            results (maxDataSize, allowStartTLS, SPFResult, …)
--   txn      this transaction: pending header changes, added / discarded /
--            rewritten recipients, per-recipient folder and relay host,
--            delayDelivery
--   filters  filters registered with addFilter
--   relay    onRelay settings (remoteSmtpHost, remoteSmtpPort, sslEnabled,
--            …) as set; the delivery code gets them as the predelivery
--            verdict Pass({host, port, tls}) (Ax:relay_route)
--   ndr, dsn onDelivery* settings (sendNDR, ndrSubject, …, dsnSubject, …)
--            as set; the delivery code gets them as the postdelivery
--            verdict Pass({bounce|delay|success = {subject, from, text,
--            recipient_text, footer, attach, send}}) (Ax:report_wording),
--            kept on the queue entry for the report
--   txn.overquota  overquotaAction per recipient → mail:queue({overquota})
--
-- Session settings (maxRcptCount, maxDataSize, maxReceivedHeaders,
-- allowStartTLS/Pipelining/8bitMime/BinaryData/DSN, localDelivery,
-- remoteDelivery) are kept in context.axigen.session, where the SMTP
-- session reads and enforces them at every stage (src/smtp/session/
-- settings.rs): whichever event sets them, later events are not needed.
--
-- Local domains are relay.domains (sluice.is_local_domain): they make
-- isRcptDomainLocal / isRcptLocal and the session's localDelivery /
-- remoteDelivery rule; isRcptLocal also asks [recipients] validation
-- (recipient.verify) when it is configured. Operator overrides go in lib_path/axigen_local.lua,
-- which the runtime loads before the first hook:
--   require("axigen").local_domains = {"example.org", …}
--       replaces relay.domains for isRcptDomainLocal / isRcptLocal.
--
-- Runtime errors: an error inside an event (a scanner that fails, a bug)
-- is logged with the policy's file:line through sluice.policy_error and
-- counted; the event then counts as having set no action, and the hook
-- goes on with the next event. It never turns into the hook's error reply.
--
-- Relaying: Sluice's built-in relay rule (relay.domains,
-- relay.trusted_networks, an authenticated session) decides every
-- recipient unless an rcptto script explicitly calls Accept(). This runtime
-- never does: smtpAction "accept" in onRcptTo (or a filter that accepts)
-- ends the hook with Pass(), so the built-in rule still decides. A policy
-- can only narrow relaying: remoteDelivery / localDelivery "none" (or "no")
-- refuse non-local / local recipients, "auth" refuses them for clients that
-- did not authenticate. Recipients added by addRcpt or rewritten through
-- currentRcpt are queued with mail:queue at end of data, where the server
-- applies the same rule.
--   require("axigen").filters.NAME = function(f) … return action, text end
--       a filter addFilter can add and executeFilters runs; `f` has
--       get(variable), mail, event, hook. action: accept, continue,
--       discard, tmpreject, reject.
--
-- Content filters: a filterName / filterAddress that is no Lua filter but
-- names a configured `[[milter]]` (its id or address), or the scanner
-- "clamd" (also "clamav") / "rspamd" of [scanners], is that filter:
--   * a milter runs in the SMTP session at every stage, as configured,
--     whether the policy adds it or not (its refusals are the session's);
--     executeFilters reads its end-of-message result (transaction.milters)
--     and is "continue" before end of data;
--   * clamd / rspamd scan the message: executeFilters at end of data runs
--     ScanClam / ScanRspamd at once (virus → reject, rspamd "reject" →
--     reject, "soft reject"/"greylist" → tmpreject); executeFilters before
--     end of data selects the scan for end of data (where a rejection
--     refuses the message) and reads "continue". A scanner that cannot
--     answer is result "error" and action tmpreject: nothing goes through
--     unscanned.
--
-- Scanners: SPFResult calls spf.check, GeoIPResult geoip.lookup,
-- checkDNSBL dnsbl.check, checkReverseDNS reverse_dns, checkSenderMX
-- sender_mx (see "Scans" below for each result's value set). A scanner
-- error is the check's error result, never a script error; GeoIP without
-- a country database reads "" (not banned), as in Axigen without its data.

local M = {}

M.local_domains = {}
M.filters = {}

local Ax = {}
Ax.__index = Ax

local lower, upper, format = string.lower, string.upper, string.format

local function str(v)
  if v == nil then
    return ""
  end
  return tostring(v)
end

-- Defined with the content filters below; M.begin uses it at end of data.
local scanner_verdict

local function trim(s)
  return (str(s):gsub("^%s+", ""):gsub("%s+$", ""))
end

local function num(s)
  return tonumber(trim(s))
end

local function split_addr(a)
  a = str(a)
  local l, d = a:match("^(.*)@([^@]*)$")
  if l then
    return l, d
  end
  return a, ""
end

local function list(s)
  local out = {}
  for item in str(s):gmatch("[^%s,;]+") do
    out[#out + 1] = item
  end
  return out
end

local function contains_ci(t, v)
  v = lower(str(v))
  for _, x in ipairs(t) do
    if lower(str(x)) == v then
      return true
    end
  end
  return false
end

local function warn(self, msg)
  self.warned = self.warned or {}
  if not self.warned[msg] then
    self.warned[msg] = true
    if log and log.warn then
      log.warn("axigen: " .. msg)
    end
  end
end

-- Variables that outlive the event that sets them (kept in context).
local SESSION = {}
for _, k in ipairs({
  "maxdatasize", "maxrcptcount", "maxreceivedheaders", "allowstarttls",
  "allowpipelining", "allow8bitmime", "allowbinarydata", "allowdsn",
  "localdelivery", "remotedelivery", "spfresult", "spfexplanation",
  "reversednsresult", "sendermxcheckresult", "dnsblserver", "dnsblresult",
  "dnsblexplanation", "geoipresult", "isgeoipbanned", "allowedcountries",
  "bannedcountries", "actiongeoipban", "overquotaaction",
}) do
  SESSION[k] = true
end

local RELAY_KEYS = {
  "localinterface", "remotesmtphost", "remotesmtpport", "remotesmtpip", "authuser",
  "authpasswd", "atuhpasswd", "maxconnections", "maxrcptcount", "smtpconnecttimeout",
  "chunksize", "allowstarttls", "allowpipelining", "allow8bitmime", "allowbinarydata",
  "requestauth", "strict7bitmime", "sslenabled", "allowedsslversions",
  "plainconnauthtypes", "secureconnauthtypes",
}
local NDR_KEYS = {
  "sendndr", "ndrattachsource", "ndrsubject", "ndrsender", "ndrmessage",
  "ndrrcptmessage", "ndrmessagefooter", "mailfrom",
}
local DSN_KEYS = { "dsnsender", "dsnsubject", "dsnmessage", "dsnrcptmessage", "dsnmessagefooter" }

local SPF_NAMES = {
  pass = "Pass", fail = "Fail", softfail = "SoftFail", neutral = "Neutral",
  none = "None", temperror = "TempError", permerror = "PermError",
}

---------------------------------------------------------------------------
-- Starting a hook run

-- lib_path/axigen_local.lua, when present, is loaded once before the first
-- hook runs: the place for local_domains, filters and scanner stubs.
local local_loaded = false

function M.begin(env, hook, policy)
  if not local_loaded then
    local_loaded = true
    local ok, err = pcall(require, "axigen_local")
    if not ok and not tostring(err):find("not found", 1, true) and log and log.error then
      log.error("axigen: loading axigen_local: " .. tostring(err))
    end
  end
  local ctx = env.context
  if type(ctx) ~= "table" then
    ctx = {}
    env.context = ctx
  end
  local st = ctx.axigen
  if type(st) ~= "table" then
    st = {}
    ctx.axigen = st
  end
  st.exports = st.exports or {}
  st.session = st.session or {}
  st.counters = st.counters or { mails = 0, size = 0 }
  st.filters = st.filters or {}
  local txn = env.transaction
  local tid = txn and txn.id or nil
  if st.txn == nil or hook == "mailfrom" or (tid ~= nil and st.txn.id ~= nil and st.txn.id ~= tid) then
    st.txn = { id = tid, added = {}, discarded = {}, rewrite = {}, folder = {}, relay = {}, hdrops = {} }
  elseif st.txn.id == nil then
    st.txn.id = tid
  end
  local self = setmetatable({
    env = env,
    hook = hook,
    policy = policy or "?",
    line = 0,
    st = st,
    vars = {},
    accepted = false,
    executed = {},
    eod_added = {},
  }, Ax)
  if hook == "mailfrom" then
    -- Axigen: once SPFResult is Fail, the following MAIL FROM commands fail.
    self.spf_failed_before = lower(str(st.session.spfresult)) == "fail"
    st.counters.mails = (st.counters.mails or 0) + 1
  end
  if hook == "headers" then
    -- What an earlier run of this hook recorded (a rejected DATA) is void.
    st.txn.hdrops_headers = {}
  end
  if hook == "eod" then
    -- Header changes made in onRcptTo / onHeadersReceived reach the
    -- message here (those hooks have no message to keep them in).
    local mail = self:mail()
    if mail then
      for _, ops in ipairs({ st.txn.hdrops or {}, st.txn.hdrops_headers or {} }) do
        for _, op in ipairs(ops) do
          self:apply_header(mail, op.op, op.name, op.value)
        end
      end
    end
    st.txn.hdrops, st.txn.hdrops_headers = {}, {}
    -- Scanner filters an earlier event selected (executeFilters before end
    -- of data) scan now; a rejection or a scanner failure refuses.
    local scans = st.txn.scans or {}
    st.txn.scans = nil
    for _, kind in ipairs({ "clamd", "rspamd" }) do
      if scans[kind] then
        local action, expl = scanner_verdict(kind)
        if action == "reject" then
          Reject(expl)
        elseif action == "tmpreject" then
          Defer(expl)
        end
      end
    end
  end
  return self
end

function Ax:mail()
  local a = self.env.arguments
  return a and a.mail or nil
end

---------------------------------------------------------------------------
-- Variables

local getters = {}

local function conn(self)
  return self.env.connection or {}
end
local function args(self)
  return self.env.arguments or {}
end
local function delivery(self)
  return self.hook == "predelivery" or self.hook == "postdelivery"
end

local function next_hop(self)
  local h = str(args(self).next_hop)
  local host, port = h:match("^%[?([^%]]*)%]?:(%d+)$")
  if host then
    return host, port
  end
  return h, ""
end

getters.smtpport = function(self) return conn(self).localport end
getters.smtpip = function(self) return conn(self).localip end
getters.remotesmtpport = function(self)
  if delivery(self) then
    local _, p = next_hop(self)
    return p
  end
  return conn(self).remoteport
end
getters.remotesmtpip = function(self)
  if delivery(self) then
    local h = next_hop(self)
    if ip and ip.is_valid(h) then
      return h
    end
    return ""
  end
  return conn(self).remoteip
end
getters.remotesmtphost = function(self)
  local h = next_hop(self)
  return h
end
getters.issslconnection = function(self)
  if self.env.connection == nil then
    return ""
  end
  return conn(self).tls and "yes" or "no"
end
getters.ehlohost = function(self)
  if self.hook == "helo" then
    return args(self).host
  end
  local h = conn(self).helo
  return h and h.host
end
getters.isesmtp = function(self)
  local verb
  if self.hook == "helo" then
    verb = args(self).verb
  else
    local h = conn(self).helo
    verb = h and h.verb
  end
  if verb == nil then
    return ""
  end
  return upper(verb) == "EHLO" and "yes" or "no"
end
getters.authuser = function(self)
  if delivery(self) then
    return ""
  end
  local a = conn(self).auth
  return a and a.username
end
getters.mailcount = function(self) return self.st.counters.mails or 0 end
getters.totalmailsize = function(self) return self.st.counters.size or 0 end

getters.mailfrom = function(self)
  if self.hook == "mailfrom" then
    return args(self).sender
  elseif delivery(self) then
    return args(self).sender
  end
  local t = self.env.transaction
  return t and t.sender
end
getters.mailfromlocalpart = function(self)
  local l = split_addr(self:get("mailFrom"))
  return l
end
getters.mailfromdomain = function(self)
  local _, d = split_addr(self:get("mailFrom"))
  return d
end
local function mail_param(self, name)
  local p
  if self.hook == "mailfrom" then
    p = args(self).params
  else
    local t = self.env.transaction
    p = t and t.senderparams
  end
  return p and p[name]
end
getters.mailfromauthuser = function(self) return mail_param(self, "AUTH") end
getters.mailfromsize = function(self) return mail_param(self, "SIZE") end
getters.rcptcount = function(self)
  if delivery(self) then
    return 1
  end
  local t = self.env.transaction
  local n = t and t.recipients and #t.recipients or 0
  return n + #(self.st.txn.added or {})
end
getters.currentrcpt = function(self)
  if self.hook == "rcptto" then
    return args(self).recipient
  end
  return ""
end
getters.currentrcptlocalpart = function(self)
  local l = split_addr(self:get("currentRcpt"))
  return l
end
getters.currentrcptfolder = function(self)
  if self.hook == "rcptto" then
    return "INBOX"
  end
  return ""
end
--- Is the domain local: axigen_local.lua's local_domains when set, else
--- relay.domains.
local function domain_is_local(d)
  if #M.local_domains > 0 then
    return contains_ci(M.local_domains, d)
  end
  return sluice ~= nil and sluice.is_local_domain(d)
end

local function rcpt_domain_local(self)
  if self.hook ~= "rcptto" then
    return ""
  end
  local _, d = split_addr(self:get("currentRcpt"))
  return domain_is_local(d) and "yes" or "no"
end
getters.isrcptdomainlocal = rcpt_domain_local
-- isRcptLocal: a local domain and, with [recipients] validation configured,
-- a mailbox the sources know ("tempfail" counts as local: the session
-- applies on_tempfail itself).
getters.isrcptlocal = function(self)
  local dl = rcpt_domain_local(self)
  if dl ~= "yes" or recipient == nil then
    return dl
  end
  local verdict = recipient.verify(self:get("currentRcpt"))
  return verdict == "unknown" and "no" or "yes"
end
getters.isoverquota = function(self) return self.hook == "rcptto" and "no" or "" end

-- Defaults of limits and switches (as Axigen documents them).
local defaults = {
  maxdatasize = "10240", maxreceivedheaders = "30", maxrcptcount = "1000",
  allowstarttls = "yes", allowpipelining = "yes", allow8bitmime = "yes",
  allowbinarydata = "yes", allowdsn = "yes", localdelivery = "all",
  remotedelivery = "auth", actiongeoipban = "reject",
}
for k, v in pairs(defaults) do
  getters[k] = function(self)
    if delivery(self) and k == "maxrcptcount" then
      return "0"
    end
    return v
  end
end

getters.spfresult = function(self)
  return (self:scan_spf())
end
getters.spfexplanation = function(self)
  return select(2, self:scan_spf())
end
getters.geoipresult = function(self)
  return self:country()
end

-- Delivery events.
local function result(self)
  return args(self).result or {}
end
getters.isfromlocaldomain = function() return "no" end
getters.ndrretrycount = function(self) return args(self).attempt end
getters.ndrrcptaddress = function(self) return args(self).recipient end
getters.dsnrcptaddress = function(self) return args(self).recipient end
getters.ndrrcptfailinfo = function(self)
  local r = result(self)
  if r.code == nil then
    return ""
  end
  return trim(format("%s %s %s", str(r.code), str(r.enhanced), str(r.text)):gsub("%s+", " "))
end
getters.dsnrcptstatus = getters.ndrrcptfailinfo
getters.ndrremainingretrycount = function(self) return args(self).remaining_attempts end
getters.ndrrescheduledate = function(self)
  local t = tonumber(args(self).next_attempt)
  return t and math.floor(t) or nil
end
getters.mailsize = function(self)
  if delivery(self) then
    return args(self).size
  end
  local m = self:mail()
  return m and m:getSize() or nil
end
getters.sendndr = function(self)
  return self.event_name == "onDeliveryFailure" and "yes" or "no"
end

--- The value of an Axigen variable (names are case-insensitive); "" when
--- it is not known.
function Ax:get(name)
  local k = lower(name)
  local v = self.vars[k]
  if v ~= nil then
    return v
  end
  v = self.st.session[k]
  if v ~= nil then
    return str(v)
  end
  local g = getters[k]
  if g then
    return str(g(self))
  end
  return ""
end

function Ax:set(name, value)
  local k = lower(name)
  value = str(value)
  self.vars[k] = value
  if SESSION[k] then
    self.st.session[k] = value
    if k == "overquotaaction" and self.hook == "rcptto" then
      -- Per recipient (as received): queue_all hands it to mail:queue.
      self.st.txn.overquota = self.st.txn.overquota or {}
      self.st.txn.overquota[lower(str(args(self).recipient))] = value
    end
  elseif k == "delaydelivery" then
    self.st.txn.delay = value
  end
end

function Ax:export(name)
  local k = lower(name)
  self.st.exports[k] = self:get(k)
end

---------------------------------------------------------------------------
-- Conditions

function Ax:is(name, value)
  return self:get(name) == str(value)
end

function Ax:isCase(name, value)
  return lower(self:get(name)) == lower(str(value))
end

function Ax:match(name, pattern)
  local ok, r = pcall(re.match, str(pattern), self:get(name))
  if not ok then
    warn(self, "match: " .. str(r))
    return false
  end
  return r
end

local function numbers(self, name, value)
  return num(self:get(name)), num(value)
end

function Ax:lessThan(name, value)
  local a, b = numbers(self, name, value)
  return a ~= nil and b ~= nil and a < b
end
function Ax:greaterThan(name, value)
  local a, b = numbers(self, name, value)
  return a ~= nil and b ~= nil and a > b
end
function Ax:greaterOrEqual(name, value)
  local a, b = numbers(self, name, value)
  return a ~= nil and b ~= nil and a >= b
end
function Ax:lessOrEqual(name, value)
  local a, b = numbers(self, name, value)
  return a ~= nil and b ~= nil and a <= b
end

local function ip4(s)
  local a, b, c, d = str(s):match("^%s*(%d+)%.(%d+)%.(%d+)%.(%d+)%s*$")
  if not a then
    return nil
  end
  a, b, c, d = tonumber(a), tonumber(b), tonumber(c), tonumber(d)
  if a > 255 or b > 255 or c > 255 or d > 255 then
    return nil
  end
  return ((a * 256 + b) * 256 + c) * 256 + d
end

--- ipRange: `range` is a list of CIDR networks (ranges written as
--- literals are converted when the policy is compiled) or a string built at
--- run time (a-b, a/len, a/netmask, a single address).
function Ax:ipRange(name, range)
  local v = trim(self:get(name))
  if v == "" or not ip.is_valid(v) then
    return false
  end
  if type(range) == "table" then
    return ip.in_network(v, range)
  end
  range = trim(range)
  local a, b = range:match("^(.-)%s*%-%s*(.+)$")
  if a then
    local x, lo, hi = ip4(v:gsub("^::ffff:", "")), ip4(a), ip4(b)
    if lo and hi then
      return x ~= nil and x >= lo and x <= hi
    end
    warn(self, "ipRange: unsupported range " .. range)
    return false
  end
  local base, mask = range:match("^(.-)/(.+)$")
  if base and ip4(mask) then
    local m = ip4(mask)
    local len = 0
    while len < 32 and m >= 2 ^ (31 - len) do
      m = m - 2 ^ (31 - len)
      len = len + 1
    end
    range = base .. "/" .. len
  end
  local ok, r = pcall(ip.in_network, v, range)
  if not ok then
    warn(self, "ipRange: bad range " .. range)
    return false
  end
  return r
end

---------------------------------------------------------------------------
-- Scans (SPF, DNSBL, reverse DNS, sender MX, GeoIP)
--
-- The scanners are Sluice's own (src/policy/api/{auth,dnsbl,geoip}.rs):
--   spf.check{ip, helo, sender}  → {result, domain, identity, explanation}
--   dnsbl.check(ip, zones)       → listed (zone → {a = {…}, txt = {…}}), errors
--   reverse_dns(ip)              → name | nil, err (err: a temporary failure)
--   sender_mx(domain)            → {ok, null_mx, implicit, mx} | nil, err
--   geoip.available("country"), geoip.lookup(ip) → {country, …}
-- A scanner failure (DNS trouble, a bad address) becomes the check's error
-- result (TempError / Error / an empty DNSBLResult with the error in
-- DNSBLExplanation); it never ends the hook with a script error, since
-- that would answer 421 to every client while the DNS is down.

local function global(self, name)
  return self.env[name]
end

-- Call a scanner without letting its errors end the hook. Verdicts cannot
-- be raised by a scanner, so pcall swallows nothing the policy decided.
local function try(f, ...)
  local r = table.pack(pcall(f, ...))
  if not r[1] then
    return false, str(r[2])
  end
  return true, table.unpack(r, 2, r.n)
end

local function client_ip(self)
  return (str(conn(self).remoteip):gsub("^::ffff:", ""))
end

-- SPFExplanation when the domain publishes no exp= text: what the result
-- means, in the words of a Received-SPF comment.
local function spf_default_explanation(res, identity, domain, addr)
  local who = identity ~= "" and identity or domain
  if res == "pass" then
    return format("domain of %s designates %s as permitted sender", who, addr)
  elseif res == "fail" then
    return format("domain of %s does not designate %s as permitted sender", who, addr)
  elseif res == "softfail" then
    return format("domain of transitioning %s does not designate %s as permitted sender", who, addr)
  elseif res == "neutral" then
    return format("%s is neither permitted nor denied by domain of %s", addr, who)
  elseif res == "none" then
    return format("domain of %s does not publish an SPF record", who)
  elseif res == "temperror" then
    return format("temporary DNS error evaluating the SPF record of %s", domain ~= "" and domain or who)
  elseif res == "permerror" then
    return format("the SPF record of %s cannot be evaluated", domain ~= "" and domain or who)
  end
  return ""
end

--- SPFResult / SPFExplanation of the current identity (the MAIL FROM
--- address; the HELO name before MAIL FROM and for the null sender):
--- computed on first read, kept for the transaction (st.txn.spf, so the
--- next MAIL FROM asks again) and returned. A Fail also goes into the
--- session, as in Axigen: the following MAIL FROMs of the connection fail
--- and SPFResult reads Fail from then on. A value the policy set itself
--- (`set (SPFResult, …)`, a session variable) is read before this runs.
function Ax:scan_spf(force)
  local txn, c = self.st.txn, conn(self)
  local h = c.helo
  local helo = h and h.host or ""
  if self.hook == "helo" then
    helo = str(args(self).host)
  end
  local sender = self:get("mailFrom")
  local key = lower(sender ~= "" and sender or ("helo:" .. helo))
  local cached = txn.spf
  if cached and cached.key == key and not force then
    return cached.result, cached.explanation
  end
  local spf = global(self, "spf")
  if type(spf) ~= "table" or type(spf.check) ~= "function" then
    warn(self, "SPFResult needs the SPF scanner (spf.check), which is not available; it reads as \"\"")
    return "", ""
  end
  local ok, r = try(spf.check, {
    ip = c.remoteip,
    helo = helo,
    sender = sender,
    domain = select(2, split_addr(sender)),
  })
  local res, expl
  if not ok then
    res, expl = "temperror", "SPF check failed: " .. r
  elseif type(r) == "table" then
    res = lower(str(r.result))
    expl = str(r.explanation)
    if expl == "" then
      expl = spf_default_explanation(res, sender ~= "" and sender or helo, str(r.domain), client_ip(self))
    end
  else
    res, expl = lower(str(r)), ""
  end
  res = SPF_NAMES[res] or str(res)
  txn.spf = { key = key, result = res, explanation = expl }
  if res == "Fail" then
    self.st.session.spfresult, self.st.session.spfexplanation = res, expl
  end
  return res, expl
end

--- checkSPF: evaluate now (whatever was read or set before); the result
--- is what SPFResult / SPFExplanation read for the rest of the event.
function Ax:checkSPF()
  local res, expl = self:scan_spf(true)
  self.vars.spfresult, self.vars.spfexplanation = res, expl
end

--- ReverseDNSResult: Pass when the client's PTR name resolves back to its
--- address (forward-confirmed), Fail when it has none (or it does not
--- confirm), TempError when DNS failed temporarily. The reference gives no
--- value set; these follow SPFResult's spelling.
function Ax:checkReverseDNS()
  local c = conn(self)
  local f = global(self, "reverse_dns")
  local r
  if type(f) == "function" then
    local ok, name, err = try(f, client_ip(self))
    if not ok then
      warn(self, "checkReverseDNS: " .. name)
      r = "TempError"
    elseif name ~= nil and name ~= false and name ~= "" then
      r = "Pass"
    elseif err ~= nil then
      r = "TempError"
    else
      r = "Fail"
    end
  elseif c.remoteptr ~= nil and c.remoteptr ~= "" then
    r = "Pass"
  else
    warn(self, "checkReverseDNS: no resolver available (reverse_dns)")
    r = "TempError"
  end
  self:set("ReverseDNSResult", r)
end

--- DNSBLServer: one zone, or several separated by spaces, commas or
--- semicolons (asked in parallel; the first listing zone in the written
--- order answers). DNSBLResult is the zone's A answer ("127.0.0.2"), ""
--- when not listed; DNSBLExplanation its TXT, or "listed in ZONE". A zone
--- that could not be asked is no listing: DNSBLResult "" and the error in
--- DNSBLExplanation.
function Ax:checkDNSBL()
  local zones = list(self:get("DNSBLServer"))
  local res, expl = "", ""
  if #zones == 0 then
    expl = "DNSBLServer is not set"
  else
    local d = global(self, "dnsbl")
    if type(d) == "table" and type(d.check) == "function" then
      local ok, listed, errors = try(d.check, client_ip(self), zones)
      if not ok then
        expl = "DNSBL lookup failed: " .. listed
      else
        listed = type(listed) == "table" and listed or {}
        for _, z in ipairs(zones) do
          local l = listed[z] or listed[lower(z)]
          if type(l) == "table" then
            res = str(l.a and l.a[1])
            local txt = l.txt and l.txt[1]
            expl = (txt ~= nil and txt ~= "") and str(txt) or ("listed in " .. z)
            break
          end
        end
        if res == "" and type(errors) == "table" then
          local msgs = {}
          for _, z in ipairs(zones) do
            local e = errors[z] or errors[lower(z)]
            if e ~= nil then
              msgs[#msgs + 1] = z .. ": " .. str(e)
            end
          end
          if #msgs > 0 then
            expl = "DNSBL lookup failed: " .. table.concat(msgs, "; ")
          end
        end
      end
    else
      warn(self, "checkDNSBL: the DNSBL scanner (dnsbl.check) is not available")
      expl = "DNSBL scanner not available"
    end
  end
  self:set("DNSBLResult", res)
  self:set("DNSBLExplanation", expl)
end

--- SenderMXCheckResult: Neutral for the null sender, Pass when the sender
--- domain has an MX (or, with none, an address: the implicit MX), Fail for
--- a null MX (RFC 7505), a domain without MX and address, or no domain,
--- Error when DNS failed temporarily.
function Ax:checkSenderMX()
  local sender = self:get("mailFrom")
  local _, domain = split_addr(sender)
  local r
  local f = global(self, "sender_mx")
  if sender == "" then
    r = "Neutral"
  elseif trim(domain) == "" then
    r = "Fail"
  elseif type(f) == "function" then
    local ok, x, err = try(f, domain)
    if not ok then
      warn(self, "checkSenderMX: " .. x)
      r = "Error"
    elseif type(x) == "table" then
      r = x.ok and "Pass" or "Fail"
    elseif x == nil and err ~= nil then
      r = "Error"
    else
      r = x and "Pass" or "Fail"
    end
  else
    warn(self, "checkSenderMX: the sender MX scanner (sender_mx) is not available")
    r = "Error"
  end
  self.st.session.sendermxcheckresult = r
  self.vars.sendermxcheckresult = r
end

--- GeoIPResult: the client's country (ISO code, upper case), "" when it is
--- not known — and "" without a country database, as Axigen reads it
--- without its GeoIP data: no lookup then, no error (`sluice check` and
--- the start log say so once, naming the first use).
function Ax:country()
  local s = self.st.session
  if s.geoipresult ~= nil then
    return s.geoipresult
  end
  local g = global(self, "geoip")
  if type(g) ~= "table" or type(g.lookup) ~= "function" then
    warn(self, "GeoIPResult needs the GeoIP scanner (geoip.lookup), which is not available; it reads as \"\"")
    return ""
  end
  if type(g.available) == "function" and not g.available("country") then
    s.geoipresult = ""
    return ""
  end
  local ok, r = try(g.lookup, client_ip(self))
  if not ok then
    warn(self, "GeoIP lookup failed: " .. r)
    r = ""
  elseif type(r) == "table" then
    r = r.country
  end
  s.geoipresult = upper(str(r))
  return s.geoipresult
end

--- checkGeoIp: banned when the country is in BannedCountries, or when
--- AllowedCountries is set and the country is not in it. An unknown
--- country (no database, an address not in it) is never banned.
--- ActionGeoIPBan (default reject) becomes smtpAction when banned.
local function geoip_banned(self, country)
  local allowed, banned = list(self:get("AllowedCountries")), list(self:get("BannedCountries"))
  return country ~= ""
    and (contains_ci(banned, country) or (#allowed > 0 and not contains_ci(allowed, country)))
end

-- isGeoIPBanned read before (or without) checkGeoIp: the lists as they
-- stand, no action taken.
getters.isgeoipbanned = function(self)
  return geoip_banned(self, self:country()) and "yes" or "no"
end

function Ax:checkGeoIp()
  local country = self:country()
  local is_banned = geoip_banned(self, country)
  self.st.session.isgeoipbanned = is_banned and "yes" or "no"
  self.vars.isgeoipbanned = nil
  if is_banned then
    local action = lower(self:get("ActionGeoIPBan"))
    if action ~= "accept" and action ~= "" then
      self.vars.smtpaction = action
      if self:get("smtpExplanation") == "" then
        self.vars.smtpexplanation = "Connections from " .. country .. " are not accepted"
      end
    end
  end
end

---------------------------------------------------------------------------
-- Headers

function Ax:apply_header(mail, op, name, value)
  if name == "" then
    return
  end
  if op == "add" then
    mail:addHeader(name, value)
  elseif op == "addifnotexists" then
    if mail:getHeader(name) == nil then
      mail:addHeader(name, value)
    end
  elseif op == "removefirst" then
    mail:delHeader(name, { index = 1 })
  elseif op == "remove" then
    mail:delHeader(name)
  elseif op == "removevalue" then
    for i, v in ipairs(mail:getHeaders(name)) do
      if trim(v) == trim(value) then
        mail:delHeader(name, { index = i })
        break
      end
    end
  elseif op == "modify" then
    if mail:getHeader(name) ~= nil then
      mail:setHeader(name, value, { index = 1 })
    else
      mail:addHeader(name, value)
    end
  elseif op == "modifyifexists" then
    if mail:getHeader(name) ~= nil then
      mail:setHeader(name, value, { index = 1 })
    end
  end
end

function Ax:header_op(op)
  local name, value = trim(self:get("HeaderName")), self:get("HeaderValue")
  if name == "" then
    warn(self, "header method called with an empty HeaderName")
    return
  end
  local mail = self:mail()
  if mail then
    self:apply_header(mail, op, name, value)
  end
  if self.hook ~= "eod" then
    -- Keep the change for the message queued at end of data.
    local list_ = self.hook == "headers" and "hdrops_headers" or "hdrops"
    self.st.txn[list_] = self.st.txn[list_] or {}
    table.insert(self.st.txn[list_], { op = op, name = name, value = value })
  end
end

function Ax:addHeader() self:header_op("add") end
function Ax:addIfNotExistsHeader() self:header_op("addifnotexists") end
function Ax:removeFirstHeader() self:header_op("removefirst") end
function Ax:removeHeader() self:header_op("remove") end
function Ax:removeHeaderValue() self:header_op("removevalue") end
function Ax:modifyHeader() self:header_op("modify") end
function Ax:modifyIfExistsHeader() self:header_op("modifyifexists") end

function Ax:readHeader()
  local mail = self:mail()
  local values = mail and mail:getHeaders(trim(self:get("HeaderName"))) or {}
  self:set("HeaderValue", table.concat(values, "\r\n"))
end

function Ax:checkExistsHeader()
  local mail = self:mail()
  local found = mail and mail:getHeader(trim(self:get("HeaderName"))) ~= nil
  self.vars.existsheader = found and "yes" or "no"
end

---------------------------------------------------------------------------
-- Recipients

function Ax:addRcpt()
  local rcpt = lower(trim(self:get("currentRcpt")))
  if rcpt == "" then
    warn(self, "addRcpt with an empty currentRcpt")
    return
  end
  local folder = self:get("currentRcptFolder")
  local entry = { recipient = rcpt, folder = folder ~= "INBOX" and folder or nil }
  if self.hook == "rcptto" then
    table.insert(self.st.txn.added, entry)
    self.added_current = rcpt
  else
    table.insert(self.eod_added, entry)
  end
end

function Ax:discardRcpt()
  if self.hook ~= "rcptto" then
    warn(self, "discardRcpt has no effect outside onRcptTo")
    return
  end
  self.discard = true
end

---------------------------------------------------------------------------
-- Filters

local function glob(pattern, s)
  if pattern == "" or pattern == "*" then
    return true
  end
  local p = "^" .. pattern:gsub("[%^%$%(%)%%%.%[%]%+%-]", "%%%0"):gsub("%*", ".*"):gsub("%?", ".") .. "$"
  return lower(s):match(lower(p)) ~= nil
end

-- The built-in content filters (see "Content filters" above).
scanner_verdict = function(kind)
  if kind == "clamd" then
    local found, err = ScanClam()
    if found == nil then
      return "tmpreject", "Virus scanner unavailable, try again later (" .. tostring(err) .. ")", true
    end
    if #found > 0 then
      return "reject", "Virus found: " .. table.concat(found, ", ")
    end
    return "continue", ""
  end
  local r, err = ScanRspamd()
  if r == nil then
    return "tmpreject", "Spam scanner unavailable, try again later (" .. tostring(err) .. ")", true
  end
  if r.action == "reject" then
    return "reject", "Spam message rejected"
  elseif r.action == "soft reject" or r.action == "greylist" then
    return "tmpreject", "Try again later"
  end
  return "continue", format("rspamd: %s (%.2f / %.2f)", str(r.action), r.score or 0, r.required_score or 0)
end

local function builtin_filter(spec)
  local cfg = sluice and sluice.scanners or {}
  for _, n in ipairs({ lower(spec.address), lower(spec.name) }) do
    if n ~= "" then
      local kind = (n == "clamav" and "clamd") or n
      if (kind == "clamd" or kind == "rspamd") and cfg[kind] then
        return function(f)
          if f.hook ~= "eod" then
            f.pending(kind)
            return "continue", "scanned at end of data"
          end
          return scanner_verdict(kind)
        end
      end
    end
  end
  local milters = sluice and sluice.milters or {}
  for id, addr in pairs(milters) do
    if lower(id) == lower(spec.name) or lower(id) == lower(spec.address) or addr == spec.address then
      return function(f)
        local m = transaction and transaction.milters and transaction.milters[id]
        if m == nil then
          return "continue", ""
        end
        if m.reply == "error" then
          return "continue", str(m.error), true
        end
        return (m.reply == "accept" and "accept" or "continue"), str(m.quarantine)
      end
    end
  end
  return nil
end

local function resolve_filter(self, spec)
  local f = M.filters[spec.name] or M.filters[spec.address]
  if type(f) == "function" then
    return f
  end
  local b = builtin_filter(spec)
  if b then
    return b
  end
  local addr = str(spec.address)
  local mod, fn = addr:match("^([%w_%.%-]+)%.([%w_]+)$")
  if mod then
    local ok, m = pcall(require, mod)
    if ok and type(m) == "table" and type(m[fn]) == "function" then
      return m[fn]
    end
  end
  local g = global(self, addr)
  if type(g) == "function" then
    return g
  end
  return nil
end

function Ax:addFilter()
  local spec = {
    name = trim(self:get("filterName")),
    type = lower(trim(self:get("filterType"))),
    address = trim(self:get("filterAddress")),
  }
  local res, expl = "ok", ""
  if spec.name == "" then
    res, expl = "error", "filterName is not set"
  elseif resolve_filter(self, spec) == nil then
    res = "error"
    expl = "no filter named " .. (spec.address ~= "" and spec.address or spec.name)
      .. " (Sluice runs filters registered in require(\"axigen\").filters, module.function Lua filters,"
      .. " configured [[milter]] ids and the [scanners] clamd and rspamd)"
  else
    local replaced = false
    for i, f in ipairs(self.st.filters) do
      if f.name == spec.name then
        self.st.filters[i] = spec
        replaced = true
      end
    end
    if not replaced then
      table.insert(self.st.filters, spec)
    end
  end
  self.vars.addfilterresult = res
  self.vars.addfilterexplanation = expl
end

function Ax:executeFilters()
  local pattern = trim(self:get("filterNamePattern"))
  local view = {
    get = function(name) return self:get(name) end,
    mail = self:mail(),
    event = self.event_name,
    hook = self.hook,
    -- A scanner filter selected before end of data: scan there.
    pending = function(kind)
      self.st.txn.scans = self.st.txn.scans or {}
      self.st.txn.scans[kind] = true
    end,
  }
  for _, spec in ipairs(self.st.filters) do
    local k = lower(spec.name)
    if glob(pattern, spec.name) then
      local f = resolve_filter(self, spec)
      local ok, action, expl = false, nil, nil
      local sys_error
      if f then
        ok, action, expl, sys_error = pcall(f, view)
      end
      if not ok then
        warn(self, "filter " .. spec.name .. " failed: " .. str(action))
        self.vars[k .. ".result"] = "error"
        self.vars[k .. ".action"] = "continue"
        self.vars[k .. ".explanation"] = str(action)
      else
        action = lower(str(action))
        if action == "" then
          action = "continue"
        end
        local fail = action == "reject" or action == "tmpreject" or action == "discard"
        self.vars[k .. ".result"] = (sys_error and "error") or (fail and "fail") or "pass"
        self.vars[k .. ".action"] = action
        self.vars[k .. ".explanation"] = str(expl)
        self.executed[#self.executed + 1] = k
      end
    else
      self.vars[k .. ".result"] = "neutral"
    end
  end
end

---------------------------------------------------------------------------
-- Events and verdicts

local function reason(text, default)
  text = trim(text)
  if text == "" then
    return default
  end
  return text
end

function Ax:decide(action, explanation)
  if action == "reject" then
    Reject(reason(explanation, nil))
  elseif action == "tmpreject" then
    Defer(reason(explanation, nil))
  elseif action == "abort" then
    Defer(reason(explanation, "Connection closed by policy"), { disconnect = true, reply_codes = { code = 421 } })
  end
end

local function delivery_event_applies(self, name)
  local r = result(self)
  local code = tonumber(r.code)
  local class
  if code then
    class = math.floor(code / 100)
  elseif r.local_error then
    class = 4
  else
    return false
  end
  if name == "onDeliverySuccess" then
    return class == 2
  elseif name == "onDeliveryFailure" then
    return class == 5
  elseif name == "onTemporaryDeliveryFailure" then
    return class == 4
  end
  return true
end

--- Run one event: fresh custom variables (plus exported ones), then the
--- action it chose.
function Ax:event(name, fn)
  if self.hook == "postdelivery" and not delivery_event_applies(self, name) then
    return
  end
  self.event_name = name
  self.vars = {}
  for k, v in pairs(self.st.exports) do
    self.vars[k] = v
  end
  self.executed = {}
  local ok, err = pcall(fn)
  if not ok then
    self:runtime_error(err)
  end
  local action = lower(trim(self.vars.smtpaction))
  if action == "" then
    -- A filter's action stands when the policy did not choose one.
    for _, k in ipairs(self.executed) do
      local a = lower(self:get(k .. ".action"))
      if a == "reject" or a == "tmpreject" then
        self:decide(a, self:get(k .. ".explanation"))
      elseif a == "accept" then
        self.accepted = true
      elseif a == "discard" and self.hook == "rcptto" then
        self.discard = true
      end
    end
  elseif action == "accept" then
    self.accepted = true
  else
    self:decide(action, self.vars.smtpexplanation)
  end
  self:after_event()
end

--- Where the generated code is (see ax.line); true, for use in conditions.
function Ax:at(line)
  self.line = line
  return true
end

--- An error inside an event: reported with the policy line, and the event
--- counts as having set no action (a broken rule must not refuse mail the
--- policy did not mean to refuse).
function Ax:runtime_error(err)
  local msg = str(err)
  if sluice and sluice.policy_error then
    sluice.policy_error({ policy = self.policy, line = self.line, event = self.event_name, message = msg })
  elseif log and log.error then
    log.error(format("axigen: %s:%d: %s: %s", self.policy, self.line, str(self.event_name), msg))
  end
  self.vars.smtpaction = nil
  self.vars.smtpexplanation = nil
  self.executed = {}
  self.discard = nil
end

--- Per-event bookkeeping that must survive the event's variables.
function Ax:after_event()
  local h = self.hook
  if h == "rcptto" then
    self.rcpt_vars = self.rcpt_vars or {}
    for _, k in ipairs({ "currentrcpt", "currentrcptfolder", "currentrcptrelayhost" }) do
      if self.vars[k] ~= nil then
        self.rcpt_vars[k] = self.vars[k]
      end
    end
  elseif h == "connect" and self.vars.smtpgreeting ~= nil then
    self.greeting = self.vars.smtpgreeting
  elseif h == "predelivery" then
    self.out = self.out or {}
    for _, k in ipairs(RELAY_KEYS) do
      if self.vars[k] ~= nil then
        self.out[k] = self.vars[k]
      end
    end
  elseif h == "postdelivery" then
    self.out = self.out or {}
    local keys = self.event_name == "onDeliverySuccess" and DSN_KEYS or NDR_KEYS
    for _, k in ipairs(keys) do
      if self.vars[k] ~= nil then
        self.out[k] = self.vars[k]
      end
    end
  end
end

--- Delay in seconds from "+[[nnh] nnm]nn[s]"; nil for other forms.
function M.parse_delay(s)
  s = trim(s)
  if s:sub(1, 1) ~= "+" then
    return nil
  end
  local total, any = 0, false
  for n, unit in s:sub(2):gmatch("(%d+)%s*([hHmMsS]?)") do
    local mul = ({ h = 3600, m = 60, s = 1 })[lower(unit)] or 1
    total = total + tonumber(n) * mul
    any = true
  end
  return any and total or nil
end

function Ax:queue_all()
  local env, txn = self.env, self.st.txn
  local t = env.transaction or { recipients = {} }
  local mail = self:mail()
  local delay
  if txn.delay ~= nil and trim(txn.delay) ~= "" then
    delay = M.parse_delay(txn.delay)
    if delay == nil then
      warn(self, "delayDelivery " .. txn.delay .. " is not a relative delay (+[[nnh] nnm]nn[s]); delivering now")
    end
  end
  local done = {}
  local function q(rcpt, transport, received_as)
    rcpt = lower(rcpt)
    if done[rcpt] then
      return
    end
    done[rcpt] = true
    local meta = {}
    if txn.folder[rcpt] then
      meta.folder = txn.folder[rcpt]
    end
    if txn.relay[rcpt] then
      meta.relayhost = txn.relay[rcpt]
    end
    local opts = { metadata = meta }
    local oq = lower(trim((txn.overquota or {})[received_as or rcpt] or ""))
    if oq == "reject" or oq == "tmpreject" then
      opts.overquota = oq
    elseif oq ~= "" then
      warn(self, "overquotaAction " .. oq .. " is not reject or tmpreject; ignored")
    end
    if delay then
      opts.delay = delay
    end
    mail:queue(t.sender, rcpt, transport, opts)
  end
  for _, r in ipairs(t.recipients or {}) do
    local addr = lower(r.recipient)
    if not txn.discarded[addr] then
      local transport = r.transportid
      if transport == nil or transport == "" then
        transport = "default"
      end
      q(txn.rewrite[addr] or addr, transport, addr)
    end
  end
  for _, list_ in ipairs({ txn.added, self.eod_added }) do
    for _, a in ipairs(list_) do
      if a.folder and txn.folder[a.recipient] == nil then
        txn.folder[a.recipient] = a.folder
      end
      q(a.recipient, "default")
    end
  end
end

-- Warnings that concern the policy, not one message: once per process.
local warned_once = {}
local function warn_once(msg)
  if not warned_once[msg] then
    warned_once[msg] = true
    if log and log.warn then
      log.warn("axigen: " .. msg)
    end
  end
end

-- onRelay settings Sluice does not act on (the rest are read below).
local RELAY_UNSUPPORTED = {
  localinterface = "localInterface", authuser = "authUser", authpasswd = "authPasswd",
  atuhpasswd = "authPasswd", requestauth = "requestAuth",
}

--- onRelay settings → the predelivery route: Pass({host, port, tls}).
--- remoteSmtpHost "[192.0.2.1]" is that address, a name is resolved to
--- its addresses (no MX lookup); remoteSmtpIp is used when no host is set.
--- sslEnabled "yes" requires TLS (STARTTLS) to the hop, "no" (or
--- allowStartTLS "no") sends in the clear.
function Ax:relay_route(out)
  for k, name in pairs(RELAY_UNSUPPORTED) do
    if out[k] ~= nil and trim(out[k]) ~= "" then
      warn_once("onRelay " .. name .. " is not supported by Sluice; ignored")
    end
  end
  local route = {}
  local host = trim(out.remotesmtphost or "")
  local rip = trim(out.remotesmtpip or "")
  if host == "" and rip ~= "" then
    host = "[" .. rip .. "]"
  end
  if host ~= "" then
    route.host = host
  end
  local port = trim(out.remotesmtpport or "")
  if port ~= "" then
    local n = tonumber(port)
    if n and n >= 1 and n <= 65535 and n == math.floor(n) then
      route.port = n
    else
      warn_once("onRelay remoteSmtpPort " .. port .. " is not a port; ignored")
    end
  end
  local ssl = lower(trim(out.sslenabled or ""))
  local starttls = lower(trim(out.allowstarttls or ""))
  if ssl == "yes" then
    route.tls = "required"
  elseif ssl == "no" or starttls == "no" then
    route.tls = "none"
  end
  if next(route) == nil then
    return nil
  end
  return route
end

local PER_RCPT = {
  ["%ndrRcptAddress%"] = "{recipient}", ["%ndrRcptFailInfo%"] = "{diagnostic}",
  ["%dsnRcptAddress%"] = "{recipient}", ["%dsnRcptStatus%"] = "{diagnostic}",
}

-- The per-recipient template, as codegen left it (%ndrRcptAddress% …
-- unexpanded), in the delivery code's placeholders.
local function rcpt_template(s)
  return (s:gsub("%%%a+%%", function(v) return PER_RCPT[v] end))
end

local ATTACH = { yes = "full", full = "full", header = "headers", headers = "headers", no = "none", none = "none" }

--- onDelivery* settings → the report wording: Pass({bounce|delay|success = …}).
function Ax:report_wording(out)
  local w = {}
  local function put(field, k, f)
    local v = out[k]
    if v ~= nil then
      w[field] = f and f(v) or v
    end
  end
  put("subject", "ndrsubject")
  put("from", "ndrsender")
  put("text", "ndrmessage")
  put("recipient_text", "ndrrcptmessage", rcpt_template)
  put("footer", "ndrmessagefooter")
  put("subject", "dsnsubject")
  put("from", "dsnsender")
  put("text", "dsnmessage")
  put("recipient_text", "dsnrcptmessage", rcpt_template)
  put("footer", "dsnmessagefooter")
  if out.sendndr ~= nil then
    local v = lower(trim(out.sendndr))
    if v == "yes" then
      w.send = true
    elseif v == "no" then
      w.send = false
    end
  end
  if out.ndrattachsource ~= nil then
    local a = ATTACH[lower(trim(out.ndrattachsource))]
    if a then
      w.attach = a
    else
      warn_once("ndrAttachSource " .. out.ndrattachsource .. " is not yes, header or no; ignored")
    end
  end
  if w.subject then
    w.subject = w.subject:gsub("[\r\n]+", " ")
  end
  if w.from then
    w.from = trim(w.from:gsub("[\r\n]+", " "))
  end
  if next(w) == nil then
    return nil
  end
  return w
end

--- After the events: limits, recipient changes, then the verdict. Falls off
--- the end (the next script of the hook decides) when the policy chose
--- nothing, except at end of data, where Axigen accepts: the message is
--- queued for every recipient and accepted.
function Ax:finish()
  local h, st = self.hook, self.st
  if h == "connect" then
    if self.greeting ~= nil then
      Reply(self.greeting, { reply_codes = { code = 220, enhanced = false } })
    end
  elseif h == "mailfrom" then
    if self.spf_failed_before then
      Reject("SPF check failed", { reply_codes = { code = 550, enhanced = "5.7.23" } })
    end
  elseif h == "rcptto" then
    local orig = lower(str(args(self).recipient))
    local rv = self.rcpt_vars or {}
    local final = orig
    if rv.currentrcpt ~= nil then
      local new = lower(trim(rv.currentrcpt))
      if new ~= "" and new ~= orig and self.added_current ~= new then
        st.txn.rewrite[orig] = new
        final = new
      end
    end
    if rv.currentrcptfolder ~= nil and rv.currentrcptfolder ~= "INBOX" then
      st.txn.folder[final] = rv.currentrcptfolder
    end
    if rv.currentrcptrelayhost ~= nil and rv.currentrcptrelayhost ~= "" then
      st.txn.relay[final] = rv.currentrcptrelayhost
    end
    if self.discard then
      st.txn.discarded[orig] = true
      Reply()
    end
  elseif h == "eod" then
    local mail = self:mail()
    st.counters.size = (st.counters.size or 0) + (mail and mail:getSize() or 0)
    self:queue_all()
    Accept()
  elseif h == "predelivery" then
    if self.out and next(self.out) then
      st.relay = self.out
      local route = self:relay_route(self.out)
      if route then
        Pass(route)
      end
    end
  elseif h == "postdelivery" then
    if self.out and next(self.out) then
      local kind
      if self.event_name == "onDeliverySuccess" then
        st.dsn = self.out
        kind = "success"
      else
        st.ndr = self.out
        kind = self.event_name == "onDeliveryFailure" and "bounce" or "delay"
      end
      local wording = self:report_wording(self.out)
      if wording then
        Pass({ [kind] = wording })
      end
    end
  end
  -- "accept" never becomes Accept() before end of data: in rcptto that
  -- would be an explicit relay decision (see the top of this file).
  if self.accepted and h ~= "postdelivery" then
    Pass()
  end
end

return M
