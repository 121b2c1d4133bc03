-- helo.lua — refuse clients that greet with a bare IP address or with our
-- own name, and remember the greeting for later hooks.

local host = arguments.host:lower()

if host:match("^%d+%.%d+%.%d+%.%d+$") or host:match("^%[") then
  Reject("Greet with a host name, not an address", {reply_codes = {code = 550, enhanced = {5, 5, 2}}})
end

if host == "mx.example.org" then
  Reject("You are not me", {disconnect = true})
end

context.helo_checked = true
