-- Test settings for the Axigen runtime: local domains, a Lua filter and
-- scanner stubs (no network in tests).
local ax = require("axigen")
ax.local_domains = { "example.org" }

ax.filters.reject_bad = function(f)
  if f.get("currentRcpt") == "bad@example.org" then
    return "reject", "bad rcpt"
  end
  return "continue"
end

-- The stubs answer in the shapes of the real scanners
-- (src/policy/api/{auth,dnsbl,geoip}.rs); tests/axigen_scanners.rs runs the
-- real ones against a test DNS server and GeoIP database.
spf = {
  check = function(q)
    if q.ip == "192.0.2.66" then
      return { result = "fail", domain = "sender.example", identity = "mailfrom",
               explanation = "192.0.2.66 is not allowed" }
    end
    return { result = "pass", domain = "sender.example", identity = "mailfrom", explanation = "ok" }
  end,
}

geoip = {
  available = function() return true end,
  lookup = function(ip)
    if ip == "192.0.2.99" then
      return { country = "CN" }
    end
    return { country = "RO" }
  end,
}

dnsbl = {
  check = function(ip, zones)
    if ip == "192.0.2.50" then
      return { [zones[1]] = { a = { "127.0.0.2" }, txt = {} } }, nil
    end
    return {}, nil
  end,
}

sender_mx = function(domain)
  local ok = domain ~= "nomx.example"
  return { ok = ok, null_mx = false, implicit = false, mx = {} }
end

reverse_dns = function(ip)
  if ip == "192.0.2.51" then
    return nil
  end
  return "client.example"
end
