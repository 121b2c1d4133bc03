-- dnsbl-connect.lua — connect: refuse clients listed on a DNSBL, unless a
-- DNSWL vouches for them. Lists are asked in parallel; a list that does not
-- answer (timeout) does not block mail.

local BLOCK = {"zen.spamhaus.org", "bl.test"}
local ALLOW = {"list.dnswl.org"}

if ip.in_network(connection.remoteip, {"127.0.0.0/8", "::1"}) then
  Pass()
end

local allowed = dnswl.check(connection.remoteip, ALLOW)
if next(allowed) then
  Pass()
end

local listed, errors = dnsbl.check(connection.remoteip, BLOCK)
for zone, answer in pairs(listed) do
  local why = answer.txt[1] or answer.a[1]
  log.info("dnsbl: " .. connection.remoteip .. " listed on " .. zone .. ": " .. why)
  Reject(connection.remoteip .. " is listed on " .. zone .. ": " .. why,
    {disconnect = true, reply_codes = {code = 554, enhanced = {5, 7, 1}}})
end
if errors then
  for zone, err in pairs(errors) do
    log.warn("dnsbl: " .. zone .. ": " .. err)
  end
end
Pass()
