--[[
Wireshark/tshark dissector for SCLP, the Segment-oriented Connection-less Protocol
(the project's normative text: docs/sclp-spec.md).

SCLP is the outer transport of VXLAN/Geneve tunnels: one payload (tunnel header + a
large inner frame, at most 65,535 bytes) is cut into MTU-sized segments, each with this
12-byte header (sclp-spec section 1, all fields big-endian):

    0-1   source port            2-3   destination port
    4-7   identification (upper 31 bits) | F (bit 0: first segment)
    8-9   remaining (payload bytes of the original payload after this segment's)
    10-11 checksum (RFC 1071 over header + segment payload, no pseudo-header)

It rides directly in IP (protocol 234, IPv4 and IPv6) or, in the UDP carrier mode
(sclp-spec section 5), in UDP to port 7234 (a preference).  Destination port 4789 is
VXLAN over SCLP, 6081 Geneve over SCLP; the payload goes to Wireshark's own dissectors
through the "sclp.port" dissector table.

Reassembly.  Wireshark's Lua API has no fragment_add, so segments are put back together
here, in Lua tables, on the first pass over the capture (pinfo.visited false), with the
receiver's rules (sclp-spec section 4): key (outer source, outer destination, source
port, destination port, ID); a segment is placed by its tail range [Remaining,
Remaining + length), so segments arriving before the first one need no special case;
total = first segment's length + its Remaining.  Exact duplicates are ignored;
overlapping bytes that disagree, a segment running past the total and segments that
disagree on the total discard the payload (expert info).  Segments with a bad checksum
are left out, like a receiver drops them.  The frame that completes a payload carries
the reassembled bytes as a new data source ("Reassembled SCLP") and dissects the tunnel
header and inner frame from it; every segment points at that frame and back.  A
payload not completed within the reassembly timeout is abandoned (its key may be
reused).  In tshark's single pass, "reassembled in frame N" appears only on frames
dissected after the completion; run tshark with -2 to see it on every segment.

Coalesced packets.  In the UDP carrier mode the endpoint sends with UDP_SEGMENT and
receives with UDP_GRO, so a capture on a host often holds one large UDP datagram with
several segments back to back (each but the last the same size).  Such a packet is
recognised by its second header (same ports and ID, Remaining consistent) and each
segment is dissected on its own (preference "Split coalesced UDP packets").

Preferences (Edit > Preferences > Protocols > SCLP, or tshark -o sclp.NAME:VALUE):
udp_port (7234), check_checksum, reassemble, split_coalesced (all TRUE), timeout (ms).

Install: install -D contrib/wireshark/sclp.lua ~/.local/lib/wireshark/plugins/sclp.lua
or, without installing: tshark -X lua_script:contrib/wireshark/sclp.lua -r capture.pcap
]]

local SCLP_HLEN = 12
local IPPROTO_SCLP = 234
local SCLP_MAX_PAYLOAD = 65535
local DEFAULT_UDP_PORT = 7234
local PORT_VXLAN = 4789
local PORT_GENEVE = 6081
-- Segments one payload may have here.  65,535 bytes at IPv4's smallest MTU (68) are
-- 1,821 segments; a payload cut finer is garbage, and every added segment costs a walk
-- over the others, so it is dropped rather than let a crafted capture stall Wireshark.
local MAX_PIECES = 2048

-- checksum status values, as Wireshark's own proto_checksum_enum_e
local CSUM_BAD, CSUM_GOOD, CSUM_UNVERIFIED, CSUM_NOT_COMPUTED = 0, 1, 2, 3

local sclp = Proto("sclp", "Segment-oriented Connection-less Protocol")

local hf = {
    srcport = ProtoField.uint16("sclp.srcport", "Source Port", base.DEC),
    dstport = ProtoField.uint16("sclp.dstport", "Destination Port", base.DEC),
    port = ProtoField.uint16("sclp.port", "Source or Destination Port", base.DEC),
    id = ProtoField.uint32("sclp.id", "Identification", base.HEX, nil, 0xFFFFFFFE),
    first = ProtoField.bool("sclp.first", "First segment", 32,
        { "Set (starts the payload)", "Not set" }, 0x00000001),
    remaining = ProtoField.uint16("sclp.remaining", "Remaining", base.DEC, nil, nil,
        "Payload bytes after this segment's"),
    checksum = ProtoField.uint16("sclp.checksum", "Checksum", base.HEX),
    checksum_calculated = ProtoField.uint16("sclp.checksum.calculated",
        "Calculated Checksum", base.HEX),
    checksum_status = ProtoField.uint8("sclp.checksum.status", "Checksum Status", base.DEC,
        { [CSUM_BAD] = "Bad", [CSUM_GOOD] = "Good", [CSUM_UNVERIFIED] = "Unverified",
          [CSUM_NOT_COMPUTED] = "Not computed" }),
    length = ProtoField.uint32("sclp.length", "Segment payload length", base.DEC),
    total = ProtoField.uint32("sclp.total", "Payload length", base.DEC, nil, nil,
        "Length of the whole payload (first segment's length + its Remaining)"),
    offset = ProtoField.uint32("sclp.offset", "Segment offset", base.DEC, nil, nil,
        "Where this segment's bytes start in the payload"),
    carrier = ProtoField.string("sclp.carrier", "Carrier"),
    data = ProtoField.bytes("sclp.data", "Segment data"),
    segments = ProtoField.none("sclp.segments", "SCLP segments"),
    segment = ProtoField.framenum("sclp.segment", "SCLP segment", base.NONE),
    segment_count = ProtoField.uint32("sclp.segment.count", "Segment count", base.DEC),
    reassembled_in = ProtoField.framenum("sclp.reassembled_in", "Reassembled in frame",
        base.NONE),
    reassembled_length = ProtoField.uint32("sclp.reassembled.length",
        "Reassembled SCLP payload length", base.DEC),
    duplicate_of = ProtoField.framenum("sclp.duplicate_of", "Duplicate of frame", base.NONE),
    discarded_in = ProtoField.framenum("sclp.discarded_in", "Payload discarded in frame",
        base.NONE),
}
local hf_list = {}
for _, field in pairs(hf) do hf_list[#hf_list + 1] = field end
sclp.fields = hf_list

local ei = {
    short = ProtoExpert.new("sclp.short", "Shorter than the 12-byte SCLP header",
        expert.group.MALFORMED, expert.severity.ERROR),
    bad_checksum = ProtoExpert.new("sclp.checksum.bad", "Bad SCLP checksum",
        expert.group.CHECKSUM, expert.severity.ERROR),
    zero_checksum = ProtoExpert.new("sclp.checksum.zero",
        "Checksum 0 (not computed) is legal only in the UDP carrier mode",
        expert.group.CHECKSUM, expert.severity.ERROR),
    oversize = ProtoExpert.new("sclp.oversize",
        "Segment ends past 65,535 payload bytes (Remaining + length)",
        expert.group.MALFORMED, expert.severity.ERROR),
    empty = ProtoExpert.new("sclp.empty", "Segment other than the first carries no bytes",
        expert.group.MALFORMED, expert.severity.ERROR),
    overlap = ProtoExpert.new("sclp.overlap.conflict",
        "Overlapping segments with conflicting bytes: payload discarded",
        expert.group.MALFORMED, expert.severity.ERROR),
    total = ProtoExpert.new("sclp.total.inconsistent",
        "Segments disagree on the payload's total length: payload discarded",
        expert.group.MALFORMED, expert.severity.ERROR),
    too_many = ProtoExpert.new("sclp.segments.too_many",
        "More segments than a 65,535-byte payload can have: payload discarded",
        expert.group.MALFORMED, expert.severity.ERROR),
    tunnel = ProtoExpert.new("sclp.tunnel.malformed", "Tunnel payload malformed",
        expert.group.MALFORMED, expert.severity.ERROR),
    truncated = ProtoExpert.new("sclp.truncated",
        "Segment truncated by the capture: checksum not verified, not reassembled",
        expert.group.UNDECODED, expert.severity.WARN),
    duplicate = ProtoExpert.new("sclp.duplicate", "Duplicate segment (ignored)",
        expert.group.SEQUENCE, expert.severity.NOTE),
    discarded = ProtoExpert.new("sclp.discarded", "Segment of a discarded payload",
        expert.group.SEQUENCE, expert.severity.WARN),
}
local ei_list = {}
for _, e in pairs(ei) do ei_list[#ei_list + 1] = e end
sclp.experts = ei_list

sclp.prefs.udp_port = Pref.uint("UDP carrier port", DEFAULT_UDP_PORT,
    "UDP destination port of SCLP's UDP carrier mode (sclp-spec section 5)")
sclp.prefs.check_checksum = Pref.bool("Validate the SCLP checksum", true,
    "Verify the checksum of every segment (segments failing it are not reassembled)")
sclp.prefs.reassemble = Pref.bool("Reassemble segmented payloads", true,
    "Put the segments of one payload back together before handing it to VXLAN/Geneve")
sclp.prefs.split_coalesced = Pref.bool("Split coalesced UDP packets", true,
    "A UDP carrier packet captured before GSO segmentation or after GRO holds several "
        .. "segments back to back: find and dissect each of them")
sclp.prefs.timeout = Pref.uint("Reassembly timeout (ms)", 1000,
    "A payload not completed within this time after its first segment is abandoned")

local port_table = DissectorTable.new("sclp.port", "SCLP port", ftypes.UINT16, base.DEC, sclp)
local data_dissector = Dissector.get("data")

--------------------------------------------------------------------------------------
-- Reassembly state, rebuilt on every (re)load of the capture.
--   frames[n][i]: what the first pass decided for the i-th SCLP segment of frame n
--                 (a frame holds several when the capture saw a GSO/GRO packet)
--   payloads[k] : the payload being reassembled under key k
--------------------------------------------------------------------------------------
local frames, payloads

function sclp.init()
    frames = {}
    payloads = {}
end

-- RFC 1071: ones' complement sum of a byte string read as big-endian 16-bit words
-- (an odd last byte is padded with zero), folded to 16 bits.
local function ones_sum(s)
    local sum = 0
    local n = #s
    local byte = string.byte
    local i = 1
    while i + 7 <= n do
        local a, b, c, d, e, f, g, h = byte(s, i, i + 7)
        sum = sum + (a + c + e + g) * 256 + b + d + f + h
        i = i + 8
    end
    while i + 1 <= n do
        local a, b = byte(s, i, i + 1)
        sum = sum + a * 256 + b
        i = i + 2
    end
    if i == n then sum = sum + byte(s, i) * 256 end
    while sum > 0xFFFF do sum = (sum % 0x10000) + math.floor(sum / 0x10000) end
    return sum
end

-- The tail range [lo, hi) of a piece as bytes of its string: index of tail position t
-- (lo <= t < hi) counted from the start of the piece is hi - 1 - t.
local function piece_bytes(piece, lo, hi)
    return string.sub(piece.data, piece.hi - hi + 1, piece.hi - lo)
end

local function discard(p, rec, reason, n)
    rec.problem = reason
    p.state = "discarded"
    p.closed_in = n
    for _, piece in ipairs(p.pieces) do
        piece.rec.discarded_in = n
    end
    p.pieces = {} -- a closed payload keeps no bytes
end

-- Do the pieces cover the tail range [lo, hi) completely?  Pieces may overlap (with
-- identical bytes, checked when they were added) or touch.
local function covers(pieces, lo, hi)
    table.sort(pieces, function(x, y) return x.lo < y.lo end)
    local pos = lo
    for _, piece in ipairs(pieces) do
        if piece.lo > pos then return false end
        if piece.hi > pos then pos = piece.hi end
        if pos >= hi then return true end
    end
    return pos >= hi
end

local function coverage_complete(p)
    return p.total ~= nil and covers(p.pieces, 0, p.total)
end

local function assemble(p)
    -- from the start of the payload (tail = total) down to its end (tail 0)
    table.sort(p.pieces, function(x, y) return x.hi > y.hi end)
    local out = {}
    local pos = p.total
    for _, piece in ipairs(p.pieces) do
        if piece.lo < pos then
            out[#out + 1] = piece_bytes(piece, piece.lo, pos)
            pos = piece.lo
        end
    end
    return table.concat(out)
end

-- First pass only: place one segment's bytes (``data``, a Lua string) in its payload.
-- ``rec`` is the segment's record; pieces keep a reference to it so that completion
-- and discards can be written back to every segment's record.
local function add_piece(key, rec, n, first, rem, data, now)
    local p = payloads[key]
    if p and (now - p.started > sclp.prefs.timeout / 1000) then
        p = nil -- an old payload under the same key: forget it
    end
    if p == nil then
        p = { pieces = {}, state = "open", started = now }
        payloads[key] = p
    end
    rec.payload = p
    if p.state ~= "open" then
        -- a late copy of a segment of a payload already completed or discarded
        rec.late = p.state
        return
    end
    local lo, hi = rem, rem + #data
    local new_total = false
    if first then
        if p.total and p.total ~= hi then return discard(p, rec, "total", n) end
        new_total = p.total == nil
        p.total = hi
    end
    if p.total then
        if hi > p.total then return discard(p, rec, "total", n) end
        for _, piece in ipairs(p.pieces) do
            if piece.hi > p.total then return discard(p, rec, "total", n) end
        end
    end
    -- overlaps: the bytes must agree (RFC 5722 spirit: a conflict discards the payload)
    for _, piece in ipairs(p.pieces) do
        local a = math.max(lo, piece.lo)
        local b = math.min(hi, piece.hi)
        if a < b and string.sub(data, hi - b + 1, hi - a) ~= piece_bytes(piece, a, b) then
            return discard(p, rec, "overlap", n)
        end
    end
    if hi > lo and covers(p.pieces, lo, hi) then
        -- nothing new (an exact or contained duplicate); a first segment still told
        -- the total, so completion is checked below all the same
        rec.duplicate = true
        for _, piece in ipairs(p.pieces) do
            if piece.lo <= lo and hi <= piece.hi then rec.duplicate_of = piece.frame end
        end
        if not (first and new_total) then return end
    elseif #p.pieces >= MAX_PIECES then
        return discard(p, rec, "too_many", n)
    else
        p.pieces[#p.pieces + 1] = { lo = lo, hi = hi, data = data, frame = n, rec = rec }
    end
    if coverage_complete(p) then
        p.state = "done"
        p.closed_in = n
        rec.reassembled = assemble(p)
        local list, seen = {}, {}
        for _, piece in ipairs(p.pieces) do
            if not seen[piece.frame] then
                list[#list + 1] = piece.frame
                seen[piece.frame] = true
            end
            piece.rec.reassembled_in = n
        end
        table.sort(list)
        rec.segment_frames = list
        p.pieces = {} -- the completing frame's record holds the bytes now
    end
end

-- The tunnel is named by the destination port (sclp-spec section 2); the source port
-- is flow entropy, tried last in case someone registered a dissector on it.  A payload
-- the tunnel dissector cannot parse (Wireshark throws for it) is reported here instead
-- of turning into a Lua error.
local function hand_off(tvb, pinfo, tree, subtree, sport, dport)
    local handle = port_table:get_dissector(dport) or port_table:get_dissector(sport)
    handle = handle or data_dissector
    local ok, err = pcall(handle.call, handle, tvb, pinfo, tree)
    if not ok then
        subtree:add_proto_expert_info(ei.tunnel, "Tunnel payload malformed: " .. tostring(err))
    end
end

local function u16(s, i) return string.byte(s, i) * 256 + string.byte(s, i + 1) end

-- The identification word starting at byte i of s with F cleared, as 4 raw bytes.
local function id_bytes(s, i)
    local last = string.byte(s, i + 3)
    return string.sub(s, i, i + 2) .. string.char(last - last % 2)
end

-- Would cutting ``s`` every ``stride`` bytes give plausible segments?  Each piece has a
-- whole header with the same ports as the first, and a piece with the same ID as the
-- one before it continues it: F clear, and the previous Remaining is this piece's
-- Remaining plus its payload length (sclp-spec section 1).
local function layout_ok(s, stride)
    local n = #s
    local ports = string.sub(s, 1, 4)
    local prev_id, prev_rem = id_bytes(s, 5), u16(s, 9)
    local off = stride
    while off < n do
        if n - off < SCLP_HLEN or string.sub(s, off + 1, off + 4) ~= ports then return false end
        local id = id_bytes(s, off + 5)
        local rem = u16(s, off + 9)
        local first = string.byte(s, off + 8) % 2 == 1
        local plen = math.min(stride, n - off) - SCLP_HLEN
        if id == prev_id and (first or prev_rem ~= rem + plen) then
            return false
        end
        prev_id, prev_rem = id, rem
        off = off + stride
    end
    return true
end

-- With only the ports to go by, computed checksums must confirm the cut: every piece
-- whose checksum field is not 0 verifies on its own.
local function checksums_ok(s, stride)
    for off = 0, #s - 1, stride do
        local piece = string.sub(s, off + 1, off + stride)
        if u16(piece, 11) ~= 0 and ones_sum(piece) ~= 0xFFFF then return false end
    end
    return true
end

-- A packet captured before GSO segmentation or after GRO (UDP carrier: the kernel's
-- UDP_SEGMENT sends and UDP_GRO receives, sclp-spec section 4 level 1) holds several
-- segments back to back, every one but the last ``stride`` bytes long.  The stride is
-- found from the second header: the same ports and ID with F clear, and the first
-- segment's Remaining equal to its Remaining plus its length (or, when the first
-- segment ends its payload, just the same ports).  Returns nil for a single segment.
local function find_stride(s)
    local n = #s
    if n < 2 * SCLP_HLEN + 1 then return nil end
    local next_hdr = string.sub(s, 1, 4) .. id_bytes(s, 5)
    local rem0 = u16(s, 9)
    local at = string.find(s, next_hdr, SCLP_HLEN + 2, true)
    while at do
        local stride = at - 1
        local plen1 = math.min(stride, n - stride) - SCLP_HLEN
        if plen1 >= 0 and u16(s, at + 8) + plen1 == rem0 and layout_ok(s, stride) then
            return stride
        end
        at = string.find(s, next_hdr, at + 1, true)
    end
    if rem0 ~= 0 then return nil end
    local ports = string.sub(s, 1, 4)
    at = string.find(s, ports, SCLP_HLEN + 2, true)
    while at do
        local stride = at - 1
        if n - stride >= SCLP_HLEN and layout_ok(s, stride) and checksums_ok(s, stride) then
            return stride
        end
        at = string.find(s, ports, at + 1, true)
    end
    return nil
end

-- Dissect one segment (header + its payload in ``tvb``).  ``index``/``count``: its
-- place among the segments of a coalesced packet (1/1 for an ordinary one).
-- ``outer`` is "source|destination" of the outer IP header, read before any segment
-- was handed on (the inner frame's dissectors overwrite pinfo.src and pinfo.dst).
local function dissect_segment(tvb, pinfo, tree, udp_carrier, outer, index, count)
    local len = tvb:len()
    local subtree = tree:add(sclp, tvb(0, math.min(len, SCLP_HLEN)))
    if len < SCLP_HLEN then
        subtree:add_proto_expert_info(ei.short)
        if index == 1 then pinfo.cols.info:set("SCLP [too short]") end
        return
    end
    local sport = tvb(0, 2):uint()
    local dport = tvb(2, 2):uint()
    local word = tvb(4, 4):uint()
    local ident = math.floor(word / 2)
    local first = word % 2 == 1
    local rem = tvb(8, 2):uint()
    local csum = tvb(10, 2):uint()
    -- a capture cut short (snaplen) has fewer bytes than the packet had
    local truncated = tvb:reported_len() > len
    local plen = tvb:reported_len() - SCLP_HLEN
    local n = pinfo.number

    subtree:append_text(string.format(", Src Port: %d, Dst Port: %d, ID: 0x%x%s, Rem: %d",
        sport, dport, ident, first and ", First" or "", rem))
    if count > 1 then
        subtree:append_text(string.format(" (segment %d of %d in this packet)", index, count))
    end
    subtree:add(hf.srcport, tvb(0, 2))
    subtree:add(hf.dstport, tvb(2, 2))
    subtree:add(hf.port, tvb(0, 2)):set_hidden()
    subtree:add(hf.port, tvb(2, 2)):set_hidden()
    subtree:add(hf.id, tvb(4, 4))
    subtree:add(hf.first, tvb(4, 4))
    subtree:add(hf.remaining, tvb(8, 2))

    -- checksum (sclp-spec section 1; 0 = not computed, UDP carrier only, section 5)
    local status
    local calc = nil
    local csum_item = subtree:add(hf.checksum, tvb(10, 2))
    if csum == 0 then
        if udp_carrier then
            status = CSUM_NOT_COMPUTED
            csum_item:append_text(" [not computed]")
        else
            status = CSUM_BAD
            csum_item:add_proto_expert_info(ei.zero_checksum)
        end
    elseif truncated then
        status = CSUM_UNVERIFIED
        csum_item:append_text(" [unverified: truncated]")
        csum_item:add_proto_expert_info(ei.truncated)
    elseif sclp.prefs.check_checksum then
        local whole = tvb:raw(0, len)
        if ones_sum(whole) == 0xFFFF then
            status = CSUM_GOOD
            csum_item:append_text(" [correct]")
        else
            status = CSUM_BAD
            -- what the sender should have put: the sum with the field taken as 0
            local without = ones_sum(string.sub(whole, 1, 10) .. "\0\0" .. string.sub(whole, 13))
            calc = 0xFFFF - without
            if calc == 0 then calc = 0xFFFF end
            csum_item:append_text(string.format(" incorrect, should be 0x%04x", calc))
            csum_item:add_proto_expert_info(ei.bad_checksum)
        end
    else
        status = CSUM_UNVERIFIED
        csum_item:append_text(" [unverified]")
    end
    if calc then subtree:add(hf.checksum_calculated, calc):set_generated() end
    subtree:add(hf.checksum_status, status):set_generated()
    subtree:add(hf.carrier, udp_carrier and "UDP" or "IP"):set_generated()
    subtree:add(hf.length, plen):set_generated()

    local hi = rem + plen
    local malformed = nil
    if hi > SCLP_MAX_PAYLOAD then
        malformed = ei.oversize
    elseif plen == 0 and not first then
        malformed = ei.empty
    end
    if malformed then subtree:add_proto_expert_info(malformed) end

    if index == 1 then
        pinfo.cols.info:set(string.format("SCLP %d → %d id=0x%x%s rem=%d", sport, dport,
            ident, first and " first" or "", rem))
        if count > 1 then
            pinfo.cols.info:append(string.format(" [%d segments coalesced]", count))
        end
    end

    local whole_payload = first and rem == 0
    local usable = status ~= CSUM_BAD and malformed == nil and not truncated
    local reassemble = sclp.prefs.reassemble and not whole_payload and usable

    -- first pass: decide, and remember the decision for later passes
    frames[n] = frames[n] or {}
    local rec = frames[n][index]
    if not pinfo.visited and rec == nil then
        rec = {}
        frames[n][index] = rec
        if reassemble then
            local key = table.concat({ outer, sport, dport, ident }, "|")
            add_piece(key, rec, n, first, rem, tvb:raw(SCLP_HLEN, plen), pinfo.abs_ts)
        end
    end
    rec = rec or {}

    if first then subtree:add(hf.total, hi):set_generated() end
    local total = (first and hi) or (rec.payload and rec.payload.total)
    if total and total >= hi then
        subtree:add(hf.offset, total - hi):set_generated()
    end
    if status == CSUM_BAD then pinfo.cols.info:append(" [bad checksum]") end

    if rec.problem == "overlap" then
        subtree:add_proto_expert_info(ei.overlap)
        pinfo.cols.info:append(" [overlap, payload discarded]")
    elseif rec.problem == "total" then
        subtree:add_proto_expert_info(ei.total)
        pinfo.cols.info:append(" [inconsistent total, payload discarded]")
    elseif rec.problem == "too_many" then
        subtree:add_proto_expert_info(ei.too_many)
        pinfo.cols.info:append(" [too many segments, payload discarded]")
    elseif rec.duplicate then
        subtree:add_proto_expert_info(ei.duplicate)
        if rec.duplicate_of then
            subtree:add(hf.duplicate_of, rec.duplicate_of):set_generated()
        end
        pinfo.cols.info:append(" [duplicate]")
    elseif rec.late then
        subtree:add_proto_expert_info(rec.late == "discarded" and ei.discarded or ei.duplicate)
        pinfo.cols.info:append(" [late segment]")
    end
    if rec.discarded_in and rec.discarded_in ~= n then
        subtree:add(hf.discarded_in, rec.discarded_in):set_generated()
        subtree:add_proto_expert_info(ei.discarded)
    end

    local payload_range = len > SCLP_HLEN and tvb(SCLP_HLEN) or nil
    if rec.reassembled then
        -- this segment completed a payload: dissect tunnel header + inner frame whole
        if payload_range then subtree:add(hf.data, payload_range) end
        local segs = subtree:add(hf.segments, payload_range or tvb())
        segs:append_text(string.format(" (%d bytes): ", #rec.reassembled))
        local nums = {}
        for _, f in ipairs(rec.segment_frames) do
            segs:add(hf.segment, f):set_generated()
            nums[#nums + 1] = "#" .. f
        end
        segs:append_text(table.concat(nums, ", "))
        subtree:add(hf.segment_count, #rec.segment_frames):set_generated()
        subtree:add(hf.reassembled_length, #rec.reassembled):set_generated()
        local whole = ByteArray.new(rec.reassembled, true):tvb("Reassembled SCLP")
        hand_off(whole, pinfo, tree, subtree, sport, dport)
    elseif whole_payload or (not sclp.prefs.reassemble and first) then
        -- an unsegmented payload, or reassembly off: the first segment's bytes
        if payload_range then
            hand_off(payload_range:tvb(), pinfo, tree, subtree, sport, dport)
        end
    else
        if payload_range then subtree:add(hf.data, payload_range) end
        if rec.reassembled_in then
            subtree:add(hf.reassembled_in, rec.reassembled_in):set_generated()
            if index == 1 and rec.reassembled_in ~= n then
                pinfo.cols.info:append(string.format(" [reassembled in #%d]",
                    rec.reassembled_in))
            end
        end
    end
end

function sclp.dissector(tvb, pinfo, tree)
    local len = tvb:len()
    pinfo.cols.protocol:set("SCLP")
    -- IP calls us with the IP protocol number matched, UDP with the port.
    local udp_carrier = pinfo.match_uint ~= IPPROTO_SCLP
    local outer = tostring(pinfo.src) .. "|" .. tostring(pinfo.dst)
    local stride = nil
    if udp_carrier and sclp.prefs.split_coalesced and len == tvb:reported_len() then
        stride = find_stride(tvb:raw(0, len))
    end
    if stride == nil then
        dissect_segment(tvb, pinfo, tree, udp_carrier, outer, 1, 1)
        return len
    end
    local count = math.ceil(len / stride)
    for i = 1, count do
        local off = (i - 1) * stride
        dissect_segment(tvb(off, math.min(stride, len - off)):tvb(), pinfo, tree, udp_carrier,
            outer, i, count)
    end
    return len
end

-- Registration: IP protocol 234 (the ip.proto table serves IPv4 and IPv6), the UDP
-- carrier port, and the tunnels by destination port.
local registered_udp_port = nil

local function register_udp_port()
    local udp = DissectorTable.get("udp.port")
    if registered_udp_port and registered_udp_port ~= 0 then
        udp:remove(registered_udp_port, sclp)
    end
    registered_udp_port = sclp.prefs.udp_port
    if registered_udp_port ~= 0 then udp:add(registered_udp_port, sclp) end
end

function sclp.prefs_changed()
    if registered_udp_port ~= sclp.prefs.udp_port then register_udp_port() end
end

DissectorTable.get("ip.proto"):add(IPPROTO_SCLP, sclp)
register_udp_port()
-- Wireshark 4.0 registers VXLAN and Geneve only in the udp.port table, not by name
-- (Dissector.get("vxlan") is nil there; later versions have both): take either.
local udp_port_table = DissectorTable.get("udp.port")
for port, name in pairs({ [PORT_VXLAN] = "vxlan", [PORT_GENEVE] = "geneve" }) do
    local ok, handle = pcall(Dissector.get, name)
    if not (ok and handle) then handle = udp_port_table:get_dissector(port) end
    if handle then port_table:add(port, handle) end
end
