-- Requests spread round-robin over a list, for bench/http_routes.py.
--
--   wrk ... -s bench/wrk/spread.lua http://127.0.0.1:PORT -- METHOD FILE
--
-- FILE holds one request a line, tab-separated: path, then header lines "Name: value"
-- (any number), and for a POST a last field "body=<the body>". Each request is formatted
-- once at start; each wrk thread starts at another place in the list, so with many
-- connections every entry (an agent, say) gets an equal share of the load.

local requests = {}
local next_index = 1

function init(args)
  local method, file = args[1], args[2]
  for line in io.lines(file) do
    if line ~= "" then
      local fields = {}
      for field in string.gmatch(line, "[^\t]+") do
        fields[#fields + 1] = field
      end
      local path, headers, body = fields[1], {}, nil
      for i = 2, #fields do
        local f = fields[i]
        if string.sub(f, 1, 5) == "body=" then
          body = string.sub(f, 6)
        else
          local name, value = string.match(f, "^([^:]+):%s*(.*)$")
          headers[name] = value
        end
      end
      if body ~= nil and headers["Content-Type"] == nil then
        headers["Content-Type"] = "application/json"
      end
      requests[#requests + 1] = wrk.format(method, path, headers, body)
    end
  end
  -- threads start apart: a thread's address in memory is as good a seed as any
  math.randomseed(os.time() + tonumber(tostring({}):match("0x(%x+)"), 16) % 100000)
  next_index = math.random(#requests)
end

function request()
  local r = requests[next_index]
  next_index = next_index % #requests + 1
  return r
end
