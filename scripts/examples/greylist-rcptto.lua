-- greylist-rcptto.lua — greylist unknown senders at RCPT, but not trusted
-- networks or authenticated clients. With [state] backend = "redis" the
-- triplets are shared by every node behind the load balancer.

local greylist = require("greylist")

if connection.auth ~= nil or ip.in_network(connection.remoteip, {"127.0.0.0/8", "::1/128"}) then
  Pass()
end

-- At most 100 recipients per client network and minute, across the fleet.
local net = ip.network(connection.remoteip, 24, 64)
if not rate.check("rcpt:" .. net, 100, 60) then
  Defer("Too many recipients from your network, slow down",
    {reply_codes = {code = 451, enhanced = {4, 7, 1}}})
end

local verdict = greylist.check({
  ip = connection.remoteip,
  sender = transaction.sender,
  recipient = arguments.recipient,
  delay = 300,
  retry_window = 86400,
  expire = 30 * 86400,
})
if verdict == "defer" then
  Defer("Greylisted, please try again later", {reply_codes = {code = 451, enhanced = {4, 7, 1}}})
end
