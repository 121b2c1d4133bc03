-- eod.lua — end of DATA, once per message (Halon's "EOD once" script).
--
-- This is what Sluice does when no eod script is configured: add our
-- Authentication-Results (and drop forged ones claiming our authserv-id;
-- nothing when [auth] results = false), queue the message for every
-- recipient over the transport chosen at RCPT time, then accept. Start your own policy from here. Anything queued is rolled back
-- unless the script ends with Accept(); an error or falling off the end
-- answers 451 4.3.0 and keeps nothing.

local mail = arguments.mail

auth.stamp(mail)

for _, rcpt in ipairs(transaction.recipients) do
  local transport = rcpt.transportid
  if transport == nil or transport == "" then
    transport = "default"
  end
  mail:queue(transaction.sender, rcpt.recipient, transport)
end

Accept()
