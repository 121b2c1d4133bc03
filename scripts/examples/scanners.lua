-- scanners.lua — eod: content scanners before the queue.
--
-- ClamAV first: a virus is rejected (554 5.7.1 with the signature names).
-- Then rspamd: "reject" is rejected, otherwise rspamd's verdict goes into
-- X-Spam-* headers (and the headers rspamd asks for, e.g. X-Spam: Yes) and
-- a message scoring at or above QUARANTINE_SCORE is queued on hold for an
-- operator (`sluice queue list`, `sluice queue release ID`).
--
-- A scanner that cannot answer (down, timeout, protocol error) defers with
-- 451 4.7.0: nothing is accepted unscanned. Needs [scanners.clamd] and
-- [scanners.rspamd] in sluice.toml.

local QUARANTINE_SCORE = 6

local mail = arguments.mail

local viruses, err = ScanClam()
if viruses == nil then
  log.warn("ScanClam: " .. err)
  Defer("Virus scanner unavailable, try again later", {reply_codes = {code = 451, enhanced = {4, 7, 0}}})
end
if #viruses > 0 then
  Reject("Virus found: " .. table.concat(viruses, ", "), {reply_codes = {code = 554, enhanced = {5, 7, 1}}})
end

local spam, serr = ScanRspamd()
if spam == nil then
  log.warn("ScanRspamd: " .. serr)
  Defer("Spam scanner unavailable, try again later", {reply_codes = {code = 451, enhanced = {4, 7, 0}}})
end
if spam.action == "reject" then
  Reject("Spam message rejected", {reply_codes = {code = 554, enhanced = {5, 7, 1}}})
end

local names = {}
for name, _ in pairs(spam.symbols) do
  names[#names + 1] = name
end
table.sort(names)
mail:setHeader("X-Spam-Score", string.format("%.2f / %.2f", spam.score, spam.required_score))
mail:setHeader("X-Spam-Action", spam.action)
if #names > 0 then
  mail:setHeader("X-Spam-Symbols", table.concat(names, ", "))
end
if spam.action == "add header" or spam.action == "rewrite subject" then
  mail:setHeader("X-Spam", "Yes")
end
-- What rspamd's milter_headers module asks for, when it is on.
local add = spam.milter and spam.milter.add_headers
if type(add) == "table" then
  for name, v in pairs(add) do
    if type(v) == "string" then
      mail:setHeader(name, v)
    elseif type(v) == "table" and type(v.value) == "string" then
      mail:setHeader(name, v.value)
    end
  end
end

local hold = spam.score >= QUARANTINE_SCORE
for _, rcpt in ipairs(transaction.recipients) do
  mail:queue(transaction.sender, rcpt.recipient, rcpt.transportid, {hold = hold})
end
Accept()
