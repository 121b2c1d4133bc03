-- connect-rate.lua — at most 30 new connections per minute from one client
-- network (/24, /64). With [state] backend = "redis" this counts across
-- every node; [limits] connections_per_ip caps the concurrent ones.

local net = ip.network(connection.remoteip, 24, 64) or connection.remoteip
local ok, count = rate.check("connect:" .. net, 30, 60)
if not ok then
  Defer("Too many connections from " .. net .. ", try again later",
    {disconnect = true, reply_codes = {code = 421, enhanced = {4, 7, 0}}})
end
