#!/bin/sh
# Regenerates the seed corpora in tests/fuzz/corpus/<target> (gitignored).
# Needs python3, and gs + qpdf for the tool-made PDFs (skipped if missing).
# Every seed gets an 8-byte control prefix (see fuzz_targets/common.rs): all
# zeros; for PDF also a copy with bit 0 set (policy Allow), for PNG a copy
# with bit 2 of byte 1 set (CRCs fixed by the harness).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
fixtures="$here/../fixtures/inspect"
corpus="$here/corpus"
mkdir -p "$corpus/jpeg" "$corpus/png" "$corpus/pdf"
prefix() { # prefix FIRST-BYTE-OCTAL SRC DST
    { printf "\\$1\\000\\000\\000\\000\\000\\000\\000"; cat "$2"; } > "$3"
}
for f in "$fixtures"/*.jpg; do prefix 000 "$f" "$corpus/jpeg/$(basename "$f")"; done
for f in "$fixtures"/*.png; do
    prefix 000 "$f" "$corpus/png/$(basename "$f")"
    # control byte 1 = 4: the harness fixes the CRCs (see fuzz_targets/png.rs)
    { printf '\000\004\000\000\000\000\000\000'; cat "$f"; } > "$corpus/png/crcfix-$(basename "$f")"
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
if command -v gs >/dev/null && command -v qpdf >/dev/null; then
    printf '%%!PS\n0.2 0.4 0.6 setrgbcolor\n72 72 200 100 rectfill\nnewpath 300 300 50 0 360 arc fill\nshowpage\n' > shapes.ps
    printf '%%!PS\n[ {Catalog} << /OpenAction << /S /JavaScript /JS (app.alert\\(1\\);) >> >> /PUT pdfmark\n72 72 200 100 rectfill\nshowpage\n' > js.ps
    printf '%%!PS\n[ /Rect [72 72 272 172] /Border [0 0 0] /Action << /S /Launch /F (calc.exe) >> /Subtype /Link /ANN pdfmark\n72 72 200 100 rectfill\nshowpage\n' > launch.ps
    printf '%%!PS\n/Helvetica findfont 24 scalefont setfont\n72 700 moveto (Receipt: JavaScript /JS Launch 12.34) show\nshowpage\n' > text.ps
    for n in shapes js launch text; do
        gs -q -dNOPAUSE -dBATCH -dSAFER -sDEVICE=pdfwrite -o "gs-$n.pdf" "$n.ps"
    done
    q() { qpdf "$@" || [ $? -eq 3 ]; }
    q --object-streams=generate gs-shapes.pdf q-objstm.pdf
    q --object-streams=generate gs-js.pdf q-objstm-js.pdf
    q --qdf gs-shapes.pdf q-qdf.pdf
    q --linearize --object-streams=generate gs-shapes.pdf q-lin-objstm.pdf
    q --stream-data=uncompress --object-streams=disable gs-js.pdf q-uncompressed-js.pdf
    q --object-streams=generate --stream-data=uncompress gs-launch.pdf q-launch-objstm-unc.pdf
    q --encrypt u o 256 -- gs-shapes.pdf q-aes256.pdf
    q --encrypt u o 128 --use-aes=y -- gs-shapes.pdf q-aes128.pdf
    q --object-streams=generate --encrypt u o 128 --use-aes=y -- gs-shapes.pdf q-aes128-objstm.pdf
else
    echo "gs or qpdf missing: only the hand-written PDF seeds" >&2
fi
python3 - <<'EOF'
import zlib

def pdf(objs, trailer=""):
    out = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n"
    offs = []
    for i, o in enumerate(objs):
        offs.append(len(out))
        out += b"%d 0 obj\n" % (i + 1) + o + b"\nendobj\n"
    x = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    for o in offs:
        out += b"%010d 00000 n \n" % o
    out += b"trailer\n<< /Size %d /Root 1 0 R %s >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objs) + 1, trailer.encode(), x)
    return out

def stream(extra, data):
    return b"<< /Length %d %s >>\nstream\n" % (len(data), extra.encode()) + data + b"\nendstream"

base = [
    b"<< /Type /Catalog /Pages 2 0 R >>",
    b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
    b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R >>",
    stream("", b"BT /F1 24 Tf 72 700 Td (Total 12.34) Tj ET\n"),
]
def w(n, b):
    open("h-" + n + ".pdf", "wb").write(b)

w("minimal", pdf(base))
w("js-escaped", pdf(base + [b"<< /S /Java#53cript /J#53 (x) >>"]))
w("encrypt-trailer", pdf(base, "/Encrypt 9 0 R"))
w("encrypt-null", pdf(base, "/Encrypt null"))
w("objstm-flate-js", pdf(base + [stream("/Type /ObjStm /N 1 /First 4 /Filter /FlateDecode",
                                        zlib.compress(b"6 0 << /S /JavaScript /JS (a) >>"))]))
w("objstm-raw", pdf(base + [stream("/Type /ObjStm /N 1 /First 4",
                                   b"6 0 << /A [1 2 (s) <414243>] /B /C#20d >>")]))
w("objstm-array-filter", pdf(base + [stream("/Type /ObjStm /N 1 /First 4 /Filter [/FlateDecode]",
                                            zlib.compress(b"6 0 << /A 1 >>"))]))
w("objstm-parms", pdf(base + [stream(
    "/Type /ObjStm /N 1 /First 4 /Filter /FlateDecode /DecodeParms << /Predictor 12 >>",
    zlib.compress(b"6 0 << >>"))]))
w("indirect-length", pdf(base + [b"<< /Length 7 0 R >>\nstream\nabcendstreax\nendstream", b"3"]))
w("xref-stream-encrypt", pdf(base + [stream("/Type /XRef /Encrypt 9 0 R /W [1 2 1]", b"\x00\x01\x02\x03")]))
w("nested", pdf(base + [b"<< /A " + b"[ " * 40 + b"]" * 40 + b" >>"]))
w("strings", pdf(base + [b"<< /A (nested (paren) \\) \\\\ /JS) /B <4a53> /C (%comment) >> % /JS comment\n"]))
w("incremental", pdf(base) + b"5 0 obj\n<< /X 1 >>\nendobj\ntrailer\n"
  b"<< /Size 6 /Prev 9 /Encrypt << /Filter /Standard >> >>\n%%EOF\n")
w("junk-before", b"garbage\r\n" * 5 + pdf(base))
w("pdf20-cr", pdf(base).replace(b"%PDF-1.7", b"%PDF-2.0").replace(b"stream\n", b"stream\r\n"))
EOF
for f in *.pdf; do
    prefix 000 "$f" "$corpus/pdf/$f"
    prefix 001 "$f" "$corpus/pdf/allow-$f"
done
# body: the fixtures and PDFs above, each as its own media type (control
# byte 1: 0 JPEG, 1 PNG, 2 PDF), read three ways (bits 4-5 of byte 0), with
# and without a declared length (bit 0); and three bodies past the 64 KiB
# hold-back: a JPEG with APP15 filler, a PNG with a large tEXt chunk, a PDF
# with a large comment (the JPEG and the PNG also with malware scanning and
# each kind of scanner answer: byte 2).
mkdir -p "$corpus/body"
python3 - "$fixtures" "$work" "$corpus/body" <<'EOF'
import glob, os, struct, sys, zlib
fixtures, work, out = sys.argv[1:]
def w(name, media, data, scans=(0,)):
    for read in range(3):
        for declared in (0, 1):
            for scan in scans:
                ctl = bytes([read << 4 | declared, media, scan]) + b"\0" * 5
                open(os.path.join(out, "%s-%d%d-%d" % (name, read, declared, scan)), "wb").write(ctl + data)
# Byte 2, malware scanning: off; clean; found; error; no answer; error
# with on_error = "allow"; found after the first chunk.
scans = (0, 1, 5, 9, 13, 11, 0x15)
files = [(f, 0) for f in glob.glob(fixtures + "/*.jpg")]
files += [(f, 1) for f in glob.glob(fixtures + "/*.png")]
files += [(f, 2) for f in sorted(glob.glob(work + "/*.pdf"))]
for f, media in files:
    w(os.path.basename(f), media, open(f, "rb").read())
jpg = open(sorted(glob.glob(fixtures + "/*.jpg"))[0], "rb").read()
app15 = b"\xff\xef\xff\xff" + b"f" * 0xfffd
w("big-jpeg", 0, jpg[:2] + app15 * 3 + jpg[2:], scans)
png = open(sorted(glob.glob(fixtures + "/*.png"))[0], "rb").read()
text = b"Comment\0" + b"t" * 150000
chunk = struct.pack(">I", len(text)) + b"tEXt" + text + struct.pack(">I", zlib.crc32(b"tEXt" + text))
w("big-png", 1, png[:33] + chunk + png[33:], scans)
pdf = open(sorted(glob.glob(work + "/*.pdf"))[0], "rb").read()
w("big-pdf", 2, pdf.replace(b"%%EOF", b"%" + b"p" * 150000 + b"\n%%EOF", 1))
EOF
# h1: what clients send on one connection, each twice (control byte 0 bit 0
# clear: pieces of 1-4096 bytes; set: 1-16 bytes).
mkdir -p "$corpus/h1"
python3 - "$corpus/h1" <<'EOF'
import sys
out = sys.argv[1]
auth = b"Authorization: Bearer a.b.c\r\nContent-Type: image/jpeg\r\n"
seeds = {
    "length-pipelined": b"POST /api/image/v1.0/receipt HTTP/1.1\r\nHost: gw\r\n" + auth
        + b"Content-Length: 5\r\n\r\nhelloGET /x HTTP/1.1\r\nHost: gw\r\n\r\n",
    "chunked-ext-trailer-hash": b"POST /r/1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0A ;a=\"b;c\";d\r\n0123456789\r\n0\r\nX-T: y\r\n\r\n"
        b"POST /r/2#f HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    "te-gzip": b"POST /r/1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\nContent-Length: 3\r\n\r\nabc",
    "te-chunked-br": b"POST /r/1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, br\r\n\r\n0\r\n\r\n",
    "te-two-lines": b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "malformed-space": b"POST /r/1 HTTP/1.1\r\nHost: x\r\nX Bad: a\r\nContent-Length: 1\r\n\r\na",
    "malformed-folded": b"POST /r/1 HTTP/1.1\r\nHost: x\r\n folded\r\nContent-Length: 1\r\n\r\na",
    "absolute-forms": b"\r\n\r\nPOST http://gw/a?b#c HTTP/1.1\r\nHost: gw\r\nContent-Length: 2\r\n\r\nab"
        b"GET http://gw HTTP/1.1\r\nHost: gw\r\n\r\nGET h2-x.y://gw/p HTTP/1.1\r\nHost: gw\r\n\r\n",
    "connect": b"CONNECT gw:443 HTTP/1.1\r\nHost: gw:443\r\n\r\nPOST /a HTTP/1.1\r\nHost: gw\r\nContent-Length: 1\r\n\r\nz",
    "two-lengths": b"POST /a HTTP/1.1\r\nHost: gw\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
    "te-and-length": b"POST /a HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    "http10": b"POST /a HTTP/1.0\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\nabcPOST /b HTTP/1.0\r\n\r\n",
    "expect": b"POST /a HTTP/1.1\r\nHost: gw\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
    "bare-lf": b"POST /a HTTP/1.1\nHost: x\nContent-Length: 1\n\nzPOST /b HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\n0\n\n",
    "trailer-lf": b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n"
        b"Transfer-Encoding: gzip\r\nX: a\nb\r\n\r\nGET /c HTTP/1.1\r\nHost: x\r\n\r\n",
    "upgrade": b"POST /a HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\nGET / HTTP/1.1\r\n\r\n",
    "obs-text": b"POST /a HTTP/1.1\r\nHost: x\r\nX-A: \x80\xff\r\nContent-Length: 0\r\n\r\n",
    "big-head": b"POST /a HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n",
    "many-fields": b"POST /a HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(101))
        + b"\r\nGET /z HTTP/1.1\r\nHost: x\r\n\r\n",
}
for name, wire in seeds.items():
    for bit in (0, 1):
        open("%s/%s-%d" % (out, name, bit), "wb").write(bytes([bit]) + b"\x00" * 7 + wire)
EOF
# h2: header blocks, encoded with the `hpack` Python package (the h2
# project's; `pip install hpack`), skipped if it is missing.
mkdir -p "$corpus/h2"
if python3 -c 'import hpack' 2>/dev/null; then
python3 - "$corpus/h2" <<'EOF'
import hpack, struct, sys, os
out_dir = sys.argv[1]
def seed(name, reqs, huffman=True, size_update=None):
    e = hpack.Encoder()
    out = b""
    for i, hdrs in enumerate(reqs):
        if size_update is not None and i == 1:
            e.header_table_size = size_update
        b = e.encode(hdrs, huffman=huffman)
        out += struct.pack(">H", len(b)) + b
    # Control byte 0: one HEADERS frame per block; 3: split and rich.
    for ctl in (0, 3):
        open(os.path.join(out_dir, "%s-%d" % (name, ctl)), "wb").write(bytes([ctl]) + b"\0" * 7 + out)
base = [(":method", "POST"), (":scheme", "http"), (":authority", "gw"),
        (":path", "/api/image/v1.0/receipt"),
        ("authorization", "Bearer eyJhbGciOiJSUzI1NiJ9.e30.c2ln"),
        ("content-type", "image/jpeg"), ("idempotency-key", "k1")]
def path(p):
    return base[:3] + [(":path", p)] + base[4:]
seed("three-huffman", [base, base, path("/api/image/v1.0/report/R1")])
seed("three-raw", [base, base, base], huffman=False)
seed("hash", [base, path("/api/image/v1.0/report/R1#R2")])
seed("query", [path("/a?b=c&d"), path("/a%23b")])
seed("connect", [[(":method", "CONNECT"), (":authority", "gw:443")], base])
seed("size-update", [base, base, base], size_update=256)
seed("size-zero", [base, base], size_update=0)
big = base + [("x-big", "v" * 3000)]
seed("evict", [big, big, base, big])
seed("never-indexed", [base + [hpack.NeverIndexedHeaderTuple("cookie", "a=b")], base])
seed("many", [base + [("x-%d" % i, "v%d" % i) for i in range(60)], base])
seed("malformed-first", [base + [("connection", "close")], base, path("/api/image/v1.0/report/R1#R2"), base])
seed("trailers", [base, [("x-sum", "1")], [(":path", "/t")], base])
seed("options-star", [[(":method", "OPTIONS"), (":scheme", "http"), (":authority", "gw"), (":path", "*")]])
seed("get-absolute", [[(":method", "GET"), (":scheme", "https"), (":authority", "gw:8443"), (":path", "/x")], base])
EOF
fi
echo "corpus files: $(ls "$corpus/jpeg" | wc -l) jpeg, $(ls "$corpus/png" | wc -l) png, $(ls "$corpus/pdf" | wc -l) pdf, $(ls "$corpus/h1" | wc -l) h1, $(ls "$corpus/h2" | wc -l) h2, $(ls "$corpus/body" | wc -l) body"
