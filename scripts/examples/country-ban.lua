-- country-ban.lua — connect: refuse clients by country (the Axigen
-- AllowedCountries / BannedCountries feature). Needs `[geoip] country_db`.
--
-- Set ALLOWED to a list to accept only those countries, or leave it empty
-- and list BANNED ones. Addresses the database does not know are accepted.

local ALLOWED = {}                 -- e.g. {"DE", "AT", "CH"}
local BANNED = {"US", "KP"}

local function member(list, x)
  for _, v in ipairs(list) do
    if v == x then return true end
  end
  return false
end

local where = geoip.lookup(connection.remoteip)
local country = where.country
if country then
  if (#ALLOWED > 0 and not member(ALLOWED, country)) or member(BANNED, country) then
    Reject("Connections from " .. country .. " are not accepted",
      {disconnect = true, reply_codes = {code = 554, enhanced = {5, 7, 1}}})
  end
end
Pass()
