-- Channel patterns: a name, or a prefix ending in '*'; a list of them is one string, newline-separated.
local function allowed(patterns, name)
  for p in string.gmatch(patterns or '', '[^\n]+') do
    if p == name or (string.sub(p, -1) == '*' and string.sub(name, 1, #p - 1) == string.sub(p, 1, -2)) then
      return true
    end
  end
  return false
end
