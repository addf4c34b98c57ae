//! title-boost: a qmdd scorer (plugins/ABI.md, version 1), written in Zig.
//!
//! A candidate whose title holds words of the query gets its engine score times 1 + 0.25 per word
//! matched, capped at 1.0: min(1, score * (1 + 0.25 * matched)). Every other candidate keeps its score.
//! A word is a run of ASCII letters and digits, at least 2 long; every other byte (space, punctuation,
//! any byte of a non-ASCII character) separates words. Title and query are cut into words the same
//! way, and a query word matches when it equals a whole word of the title, ASCII case ignored: the query
//! `sqlite wal` gives `SQLite WAL notes` two matches (x 1.5), `WAL-mode` one, `walrus` none. A query
//! word said twice counts once; an empty query (or one of 1-letter words) changes nothing.
//!
//! Build (from the repository root; the .wasm beside this file is its output, committed):
//!
//!   python -m ziglang build-exe plugins/zig/title-boost.zig -target wasm32-freestanding -O ReleaseSmall \
//!       -fno-entry -rdynamic -fstrip --stack 65536 -femit-bin=plugins/zig/title-boost.wasm
//!
//! `-fno-entry` because a plugin has no main; `-rdynamic` exports the `export fn`s below (and `memory`,
//! which Zig exports by default); `-fstrip` drops debug info (smaller, and no paths in the output);
//! `--stack 65536` sets a 64 KiB stack instead of Zig's 1 MiB (this code needs little). The module
//! imports nothing: no std, no WASI, no host functions.

/// WebAssembly's page size: memory grows by whole pages.
const page_size = 65536;

/// One candidate's record in the input block (ABI.md, "The input block"): 40 bytes, little-endian.
const Record = extern struct {
    score: f32,
    text_ptr: u32,
    text_len: u32,
    title_ptr: u32,
    title_len: u32,
    path_ptr: u32,
    path_len: u32,
    meta_ptr: u32,
    meta_len: u32,
    rank: u32,
};

comptime {
    if (@sizeOf(Record) != 40) @compileError("a record is 40 bytes");
}

/// The bump allocator's next free byte, 0 until the first qmd_alloc. It never frees: every call gets a
/// fresh instance, so a batch's memory goes with it.
var heap_top: u64 = 0;

export fn qmd_abi_version() i32 {
    return 1;
}

/// A pointer to `size` free bytes, 8-aligned, growing memory to fit; 0 when the host's memory cap (or
/// the 4 GiB address space) leaves no room. The heap starts where the memory the module was instantiated
/// with ends: the linker placed everything else (stack, globals) below that, so the heap never meets it,
/// and a pointer handed out is never 0. Sums are in u64 so they cannot wrap.
export fn qmd_alloc(size: u32) u32 {
    const have: u64 = @as(u64, @wasmMemorySize(0)) * page_size;
    if (heap_top == 0) heap_top = @max(have, 8);
    const start = (heap_top + 7) & ~@as(u64, 7);
    const end = start + size;
    if (end > 0xFFFF_FFFF) return 0;
    if (end > have) {
        const pages = (end - have + page_size - 1) / page_size;
        // Past the host's cap memory.grow answers -1 rather than trap.
        if (@wasmMemoryGrow(0, @intCast(pages)) < 0) return 0;
    }
    heap_top = end;
    return @intCast(start);
}

/// The `len` bytes at address `ptr`.
fn bytes(ptr: u32, len: u32) []const u8 {
    if (len == 0) return "";
    const at: [*]const u8 = @ptrFromInt(ptr);
    return at[0..len];
}

fn isWordByte(c: u8) bool {
    const lower = c | 0x20; // A-Z to a-z; other bytes it moves stay outside a-z
    return (c >= '0' and c <= '9') or (lower >= 'a' and lower <= 'z');
}

/// The next word of `s` from `i.*` on (a run of ASCII letters and digits, at least 2 long), leaving
/// `i.*` after it; null when there is none.
fn nextWord(s: []const u8, i: *usize) ?[]const u8 {
    while (true) {
        while (i.* < s.len and !isWordByte(s[i.*])) i.* += 1;
        if (i.* == s.len) return null;
        const start = i.*;
        while (i.* < s.len and isWordByte(s[i.*])) i.* += 1;
        if (i.* - start >= 2) return s[start..i.*];
    }
}

/// Two words equal, ASCII case ignored (both hold only letters and digits, so `| 0x20` folds case).
fn sameWord(a: []const u8, b: []const u8) bool {
    if (a.len != b.len) return false;
    for (a, b) |x, y| {
        if (x | 0x20 != y | 0x20) return false;
    }
    return true;
}

/// Whether `word` is one of the words of `text`.
fn hasWord(text: []const u8, word: []const u8) bool {
    var i: usize = 0;
    while (nextWord(text, &i)) |w| {
        if (sameWord(w, word)) return true;
    }
    return false;
}

/// The hook: one f32 per candidate at `output`, in the engine's order.
export fn qmd_score(input: u32, count: u32, output: u32) i32 {
    const header: [*]const u32 = @ptrFromInt(input);
    const query = bytes(header[0], header[1]);
    const records: [*]const Record = @ptrFromInt(input + 8);
    const scores: [*]f32 = @ptrFromInt(output);

    // The query's distinct words, found once for the batch. A word takes 2 bytes and a separator, so
    // there are at most len / 3 + 1 of them; room for their slices comes from the allocator.
    const room = qmd_alloc((header[1] / 3 + 1) * @sizeOf([]const u8));
    if (room == 0) return 1;
    const words: [*][]const u8 = @ptrFromInt(room);
    var n: usize = 0;
    var i: usize = 0;
    while (nextWord(query, &i)) |w| {
        for (words[0..n]) |seen| {
            if (sameWord(seen, w)) break;
        } else {
            words[n] = w;
            n += 1;
        }
    }

    for (0..count) |k| {
        const record = records[k];
        const title = bytes(record.title_ptr, record.title_len);
        var matched: u32 = 0;
        for (words[0..n]) |word| {
            if (hasWord(title, word)) matched += 1;
        }
        // Capped here rather than left to the host's clamp, so the score `--explain` shows is the one
        // meant; a candidate without a match keeps its score exactly.
        scores[k] = if (matched == 0)
            record.score
        else
            @min(1.0, record.score * (1.0 + 0.25 * @as(f32, @floatFromInt(matched))));
    }
    return 0;
}
