-- proxy.lua — a custom SMTP command. Configure with
--   [scripts]
--   proxy = "scripts/examples/proxy.lua"
--   proxy_commands = []        # empty: commands the server does not know
--
-- "XSTATUS" answers with a multi-line reply; everything else is passed on.

local verb, rest = arguments.command:match("^(%S+)%s*(.*)$")
verb = (verb or ""):upper()

if verb == "XSTATUS" then
  Reply({
    "connection " .. connection.id,
    "client " .. connection.remoteip,
    "recipients so far " .. tostring(context.rcpts or 0),
  })
end

Pass()
