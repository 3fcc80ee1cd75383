-- vxnet.lua: tshark/Wireshark helper for vxnet's data port (UDP 4789).
--
-- vxnet carries plain VXLAN, ESP (RFC 4303, AES-GCM RFC 4106) and its own
-- control messages on the same port and tells them apart by the first 32-bit
-- word: 0 is a control message, 0x08000000 a VXLAN header, anything else an
-- ESP SPI. Wireshark's "Decode As udpencap" cannot be used for this because
-- the ESP payload is itself a UDP datagram to port 4789 (RFC 3948 style): the
-- inner one would be decoded as ESP again instead of VXLAN. This dissector
-- takes port 4789 and hands each datagram to the standard ESP or VXLAN
-- dissector, so the standard ESP SA table (uat:esp_sa) decrypts it.
--
-- tshark -X lua_script:vxnet.lua -o esp.enable_encryption_decode:TRUE \
--   -o 'uat:esp_sa:"IPv4","SRC","DST","0xSPI","AES-GCM with 16 octet ICV [RFC4106]","0xKEYSALT","NULL",""' \
--   -r capture.pcap

local vxnet = Proto("vxnet", "vxnet data port")
local udp_port = DissectorTable.get("udp.port")
-- The VXLAN dissector has no registered name; take it from the port table
-- before replacing it there.
local vxlan = udp_port:get_dissector(4789)
local esp = Dissector.get("esp")
local data = Dissector.get("data")

function vxnet.dissector(tvb, pinfo, tree)
    if tvb:len() < 4 then
        return data:call(tvb, pinfo, tree)
    end
    local word = tvb(0, 4):uint()
    if word == 0 then
        pinfo.cols.protocol = "VXNET-CTL"
        local t = tree:add(vxnet, tvb(), "vxnet control message")
        return data:call(tvb(4):tvb(), pinfo, t)
    elseif word == 0x08000000 then
        return vxlan:call(tvb, pinfo, tree)
    else
        return esp:call(tvb, pinfo, tree)
    end
end

udp_port:add(4789, vxnet)
