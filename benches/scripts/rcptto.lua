local local_domains = { ["example.org"] = "default", ["lmtp.example.org"] = "default" }
local t = local_domains[arguments.address.domain]
if t then Pass({transportid = t}) end
Reject("relay denied")
