-- Typical connect work: a table lookup on the client address.
local blocked = { ["192.0.2.1"] = true, ["198.51.100.7"] = true }
if blocked[connection.remoteip] then Reject("blocked") end
context.seen = (context.seen or 0) + 1
