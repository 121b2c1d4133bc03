local local_domains = { ["example.org"] = "default", ["lmtp.example.org"] = "default" }
local t = local_domains[string.lower(arguments.address:match("@(.+)$") or "")]
if t then Pass({transportid = t}) end
Reject("relay denied")
