-- rcptto.lua — route recipients to transports by domain, refuse the rest.
-- Transport ids must exist in [transport.*].

local routes = {
  ["example.org"] = "default",
  ["lists.example.org"] = "lmtp",
}

-- arguments.recipient is the address string, arguments.address its parts
-- ({localpart, domain}; lowercase, domain "" for a bare "postmaster").
local transport = routes[arguments.address.domain]

if transport == nil then
  Reject("Relaying denied", {reply_codes = {code = 550, enhanced = {5, 7, 1}}})
end

context.rcpts = (context.rcpts or 0) + 1
if context.rcpts > 50 then
  Defer("Too many recipients, try again later", {reply_codes = {code = 452, enhanced = {4, 5, 3}}})
end

Pass({transportid = transport})
