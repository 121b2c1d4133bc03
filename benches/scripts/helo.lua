if arguments.host == "" or arguments.host:find("%.invalid$") then Reject("bad HELO") end
context.helo = arguments.host
