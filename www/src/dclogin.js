// dclogin.js: the invitation on the home page of a relay with a self-signed certificate.
// Delta Chat cannot fetch https://<domain>/new from such a relay
// itself, so this page does: it asks /new (GET) for fresh credentials and shows the
// `dclogin:` link it gets back as a button and as a QR code. Nothing is stored anywhere:
// the account comes into being when the app first logs in with these credentials.
//
// The QR encoder is our own and deliberately small: byte mode, error correction level M,
// versions 1 to 40, all eight masks scored by the penalty rules of ISO/IEC 18004.
"use strict";

const QR = (() => {
  // Level M, per version 1..40: error correction codewords per block, and number of blocks.
  const EC_PER_BLOCK = [
    10, 16, 26, 18, 24, 16, 18, 22, 22, 26, 30, 22, 22, 24, 24, 28, 28, 26, 26, 26,
    26, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28, 28,
  ];
  const BLOCKS = [
    1, 1, 1, 2, 2, 4, 4, 4, 5, 5, 5, 8, 9, 9, 10, 10, 11, 13, 14, 16,
    17, 17, 18, 20, 21, 23, 25, 26, 28, 29, 31, 33, 35, 37, 38, 40, 43, 45, 47, 49,
  ];
  const LEVEL_M = 0b00; // the two error-correction bits of the format information

  // Arithmetic in GF(256) modulo x^8 + x^4 + x^3 + x^2 + 1, through log and antilog tables.
  const EXP = new Uint8Array(510);
  const LOG = new Uint8Array(256);
  for (let i = 0, x = 1; i < 255; i++) {
    EXP[i] = EXP[i + 255] = x;
    LOG[x] = i;
    x = x & 0x80 ? ((x << 1) ^ 0x11d) & 0xff : x << 1;
  }
  const times = (a, b) => (a && b ? EXP[LOG[a] + LOG[b]] : 0);

  // The Reed-Solomon generator (x - 1)(x - a)...(x - a^(n-1)), highest power first.
  function generator(n) {
    let poly = [1];
    for (let i = 0; i < n; i++) {
      const next = new Array(poly.length + 1).fill(0);
      poly.forEach((coef, j) => {
        next[j] ^= coef;
        next[j + 1] ^= times(coef, EXP[i]);
      });
      poly = next;
    }
    return poly;
  }

  // The error correction codewords: data * x^n modulo the generator.
  function correction(data, gen) {
    const rest = new Array(gen.length - 1).fill(0);
    for (const byte of data) {
      const factor = byte ^ rest.shift();
      rest.push(0);
      rest.forEach((_, i) => (rest[i] ^= times(gen[i + 1], factor)));
    }
    return rest;
  }

  function alignmentCentres(version) {
    if (version === 1) return [];
    const count = Math.floor(version / 7) + 2;
    const last = 4 * version + 10;
    const step = version === 32 ? 26 : 2 * Math.ceil((last - 6) / (2 * (count - 1)));
    const centres = [6];
    for (let i = count - 2; i >= 0; i--) centres.push(last - i * step);
    return centres;
  }

  // BCH codes of the format (15,5) and version (18,6) information.
  function bch(value, poly, polyBits) {
    let rest = value;
    for (let i = 0; i < polyBits - 1; i++) {
      rest = (rest << 1) ^ ((rest >> (polyBits - 2)) & 1 ? poly : 0);
    }
    return (value << (polyBits - 1)) | rest;
  }

  // A symbol with its function patterns drawn; `fixed` marks the modules data must skip.
  function functionPatterns(version) {
    const size = 17 + 4 * version;
    const dark = Array.from({ length: size }, () => new Uint8Array(size));
    const fixed = Array.from({ length: size }, () => new Uint8Array(size));
    const set = (r, c, on) => {
      dark[r][c] = on ? 1 : 0;
      fixed[r][c] = 1;
    };
    for (const [top, left] of [[0, 0], [0, size - 7], [size - 7, 0]]) {
      for (let dr = -1; dr <= 7; dr++) {
        for (let dc = -1; dc <= 7; dc++) {
          const r = top + dr;
          const c = left + dc;
          if (r < 0 || c < 0 || r >= size || c >= size) continue;
          const ring = Math.max(Math.abs(dr - 3), Math.abs(dc - 3)); // 4 is the separator
          set(r, c, ring !== 2 && ring !== 4);
        }
      }
    }
    const centres = alignmentCentres(version);
    for (const r of centres) {
      for (const c of centres) {
        if (fixed[r][c]) continue; // the corners that hold finder patterns
        for (let dr = -2; dr <= 2; dr++) {
          for (let dc = -2; dc <= 2; dc++) {
            set(r + dr, c + dc, Math.max(Math.abs(dr), Math.abs(dc)) !== 1);
          }
        }
      }
    }
    for (let i = 8; i < size - 8; i++) {
      set(6, i, i % 2 === 0);
      set(i, 6, i % 2 === 0);
    }
    drawFormat({ dark, fixed, size, set }, 0); // reserves the format areas and the dark module
    if (version >= 7) {
      const bits = bch(version, 0x1f25, 13);
      for (let i = 0; i < 18; i++) {
        const near = size - 11 + (i % 3);
        const far = Math.floor(i / 3);
        set(far, near, (bits >> i) & 1);
        set(near, far, (bits >> i) & 1);
      }
    }
    return { dark, fixed, size, set };
  }

  function drawFormat(grid, mask) {
    const { size, set } = grid;
    const bits = bch((LEVEL_M << 3) | mask, 0x537, 11) ^ 0x5412;
    const bit = (i) => (bits >> i) & 1;
    for (let i = 0; i < 6; i++) set(i, 8, bit(i));
    set(7, 8, bit(6));
    set(8, 8, bit(7));
    set(8, 7, bit(8));
    for (let i = 9; i < 15; i++) set(8, 14 - i, bit(i));
    for (let i = 0; i < 8; i++) set(8, size - 1 - i, bit(i));
    for (let i = 8; i < 15; i++) set(size - 15 + i, 8, bit(i));
    set(size - 8, 8, 1);
  }

  const MASKS = [
    (r, c) => (r + c) % 2 === 0,
    (r) => r % 2 === 0,
    (r, c) => c % 3 === 0,
    (r, c) => (r + c) % 3 === 0,
    (r, c) => (Math.floor(r / 2) + Math.floor(c / 3)) % 2 === 0,
    (r, c) => ((r * c) % 2) + ((r * c) % 3) === 0,
    (r, c) => (((r * c) % 2) + ((r * c) % 3)) % 2 === 0,
    (r, c) => (((r + c) % 2) + ((r * c) % 3)) % 2 === 0,
  ];

  // Lower is easier to scan: long runs, 2x2 blocks, finder look-alikes, dark/light imbalance.
  function penalty(dark) {
    const size = dark.length;
    let score = 0;
    const lines = dark.map((row) => Array.from(row));
    for (let c = 0; c < size; c++) lines.push(dark.map((row) => row[c]));
    for (const line of lines) {
      let run = 1;
      for (let i = 1; i <= size; i++) {
        if (i < size && line[i] === line[i - 1]) {
          run++;
        } else {
          if (run >= 5) score += run - 2;
          run = 1;
        }
      }
      const text = line.join("");
      for (const pattern of ["10111010000", "00001011101"]) {
        for (let at = text.indexOf(pattern); at !== -1; at = text.indexOf(pattern, at + 1)) {
          score += 40;
        }
      }
    }
    let darkCount = 0;
    for (let r = 0; r < size; r++) {
      for (let c = 0; c < size; c++) {
        darkCount += dark[r][c];
        if (r && c) {
          const sum = dark[r][c] + dark[r - 1][c] + dark[r][c - 1] + dark[r - 1][c - 1];
          if (sum === 0 || sum === 4) score += 3;
        }
      }
    }
    const percent = (100 * darkCount) / (size * size);
    return score + 10 * Math.floor(Math.abs(percent - 50) / 5);
  }

  // The codewords: mode, length, data, terminator and padding, split into blocks, each
  // followed by its error correction, then interleaved.
  function codewords(bytes, version, capacity) {
    const bits = [];
    const put = (value, count) => {
      for (let i = count - 1; i >= 0; i--) bits.push((value >> i) & 1);
    };
    const blocks = BLOCKS[version - 1];
    const ecLength = EC_PER_BLOCK[version - 1];
    const dataLength = capacity - blocks * ecLength;
    put(0b0100, 4); // byte mode
    put(bytes.length, version < 10 ? 8 : 16);
    bytes.forEach((b) => put(b, 8));
    put(0, Math.min(4, dataLength * 8 - bits.length));
    while (bits.length % 8) bits.push(0);
    const data = [];
    for (let i = 0; i < bits.length; i += 8) data.push(parseInt(bits.slice(i, i + 8).join(""), 2));
    for (let pad = 0xec; data.length < dataLength; pad ^= 0xec ^ 0x11) data.push(pad);

    const gen = generator(ecLength);
    const shortLength = Math.floor(dataLength / blocks);
    const longFrom = blocks - (dataLength % blocks); // the last blocks hold one more codeword
    const split = [];
    for (let b = 0, at = 0; b < blocks; b++) {
      const part = data.slice(at, (at += shortLength + (b >= longFrom ? 1 : 0)));
      split.push({ part, ec: correction(part, gen) });
    }
    const out = [];
    for (let i = 0; i <= shortLength; i++) {
      for (const { part } of split) if (i < part.length) out.push(part[i]);
    }
    for (let i = 0; i < ecLength; i++) for (const { ec } of split) out.push(ec[i]);
    return out;
  }

  // Returns the module matrix (rows of 0/1, 1 = dark) for `text` encoded as UTF-8.
  function encode(text) {
    const bytes = Array.from(new TextEncoder().encode(text));
    for (let version = 1; version <= 40; version++) {
      const grid = functionPatterns(version);
      const { dark, fixed, size } = grid;
      let free = 0;
      fixed.forEach((row) => row.forEach((f) => (free += 1 - f)));
      const capacity = free >> 3;
      const dataBits = 8 * (capacity - BLOCKS[version - 1] * EC_PER_BLOCK[version - 1]);
      if (4 + (version < 10 ? 8 : 16) + 8 * bytes.length > dataBits) continue;

      const words = codewords(bytes, version, capacity);
      let i = 0; // zigzag through column pairs from the right, skipping the timing column
      for (let right = size - 1; right >= 1; right -= 2) {
        if (right === 6) right = 5;
        const upward = ((right + 1) & 2) === 0;
        for (let step = 0; step < size; step++) {
          const r = upward ? size - 1 - step : step;
          for (const c of [right, right - 1]) {
            if (fixed[r][c]) continue;
            dark[r][c] = i < words.length * 8 ? (words[i >> 3] >> (7 - (i & 7))) & 1 : 0;
            i++;
          }
        }
      }

      let best = null;
      for (let mask = 0; mask < 8; mask++) {
        const candidate = dark.map((row, r) =>
          row.map((on, c) => (fixed[r][c] || !MASKS[mask](r, c) ? on : on ^ 1)),
        );
        const set = (r, c, on) => (candidate[r][c] = on ? 1 : 0);
        drawFormat({ size, set }, mask);
        const score = penalty(candidate);
        if (!best || score < best.score) best = { score, matrix: candidate };
      }
      return best.matrix.map((row) => Array.from(row));
    }
    throw new Error("too long for a QR code");
  }

  // An SVG drawing of the matrix with a quiet zone of four modules.
  function svg(matrix, label) {
    const size = matrix.length + 8;
    let path = "";
    matrix.forEach((row, r) =>
      row.forEach((on, c) => {
        if (on) path += `M${c + 4} ${r + 4}h1v1h-1z`;
      }),
    );
    const ns = "http://www.w3.org/2000/svg";
    const image = document.createElementNS(ns, "svg");
    image.setAttribute("viewBox", `0 0 ${size} ${size}`);
    image.setAttribute("shape-rendering", "crispEdges");
    image.setAttribute("role", "img");
    image.setAttribute("aria-label", label);
    const background = document.createElementNS(ns, "rect");
    background.setAttribute("width", size);
    background.setAttribute("height", size);
    background.setAttribute("fill", "#fff");
    const modules = document.createElementNS(ns, "path");
    modules.setAttribute("d", path);
    modules.setAttribute("fill", "#000");
    image.append(background, modules);
    return image;
  }

  return { encode, svg };
})();

async function showInvitation(box) {
  const status = box.querySelector(".invite-status");
  try {
    const response = await fetch("/new", { method: "GET", cache: "no-store" });
    if (!response.ok) throw new Error(`the relay answered ${response.status}`);
    const url = (await response.json()).dclogin_url;
    if (!url || !url.startsWith("dclogin:")) throw new Error("the answer holds no dclogin link");
    const button = document.createElement("a");
    button.className = "button";
    button.href = url;
    button.textContent = "Open in Delta Chat";
    const figure = document.createElement("div");
    figure.className = "qr";
    figure.append(QR.svg(QR.encode(url), "QR code of your new profile's login"));
    status.replaceWith(button, figure);
  } catch (error) {
    status.textContent =
      `No invitation could be fetched (${error.message}). Reload the page to try again.`;
  }
}

if (typeof document !== "undefined") {
  const start = async () => {
    // registration.js may find that the relay no longer hands out profiles freely: then
    // there is nothing to ask /new for (doc/accounts.md)
    if (window.chatmailRegistration) await window.chatmailRegistration;
    const box = document.getElementById("dclogin");
    const registration = document.getElementById("registration");
    if (box && (!registration || registration.dataset.mode === "open")) showInvitation(box);
  };
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
}

if (typeof module !== "undefined") module.exports = QR;
