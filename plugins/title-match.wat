;; title-match: a scorer that raises hits whose title holds the query.
;;
;; When the whole query text occurs in a candidate's title, ignoring ASCII case, the candidate's score
;; gets 0.2 added, capped at 1.0; otherwise it is unchanged. The query `sqlite wal` raises the title
;; `SQLite WAL notes`, not `WAL in SQLite`: the phrase as typed, which is a strong sign the note is *about*
;; it, where the engine's score also counts the body. An empty query changes nothing (every title would
;; "contain" it).
;;
;; Only A-Z are folded to a-z; every other byte is compared as it is. That is safe on UTF-8 text: a byte
;; of a multi-byte character is never an ASCII letter, and as the query is whole UTF-8, a match starts
;; where a character of the title starts and ends where one ends. `É` and `é` stay different.
;;
;; Adding (rather than multiplying, as path-boost does) lifts a title match by the same step wherever the
;; engine placed it, so a weak body match whose title names the query can pass stronger ones.
;;
;; It is written to plugins/ABI.md, version 1, and imports nothing.
(module
  ;; One page to start; qmd_alloc grows it when a batch needs more.
  (memory (export "memory") 1)

  ;; The bump allocator's next free byte. There is no data, but 0 is never handed out (its caller reads
  ;; it as "no room"), so the heap starts at 8, the first 8-aligned address after it. It never frees:
  ;; every call gets a fresh instance, so a batch's memory is dropped with it.
  (global $heap (mut i32) (i32.const 8))

  (func (export "qmd_abi_version") (result i32)
    (i32.const 1))

  ;; A pointer to `size` free bytes, 8-aligned (the ABI asks for it), growing memory to fit; 0 when the
  ;; memory cap (or the 4 GiB address space) leaves no room.
  (func (export "qmd_alloc") (param $size i32) (result i32)
    (local $ptr i32)
    (local $end i32)
    (local $pages i32)
    (local.set $ptr (i32.and (i32.add (global.get $heap) (i32.const 7)) (i32.const -8)))
    (local.set $end (i32.add (local.get $ptr) (local.get $size)))
    ;; Wrapping past 4 GiB means `size` was never going to fit.
    (if (i32.lt_u (local.get $end) (local.get $ptr))
      (then (return (i32.const 0))))
    ;; Pages needed to hold [0, end), counted without overflowing: whole pages plus one for a remainder.
    (local.set $pages
      (i32.add (i32.shr_u (local.get $end) (i32.const 16))
               (i32.ne (i32.and (local.get $end) (i32.const 0xffff)) (i32.const 0))))
    (if (i32.gt_u (local.get $pages) (memory.size))
      (then
        ;; The host's memory cap makes memory.grow answer -1 rather than trap.
        (if (i32.eq (memory.grow (i32.sub (local.get $pages) (memory.size))) (i32.const -1))
          (then (return (i32.const 0))))))
    (global.set $heap (local.get $end))
    (local.get $ptr))

  ;; A byte with A-Z folded to a-z.
  (func $lower (param $byte i32) (result i32)
    (if (result i32) (i32.lt_u (i32.sub (local.get $byte) (i32.const 0x41)) (i32.const 26))  ;; 'A'..'Z'
      (then (i32.or (local.get $byte) (i32.const 0x20)))
      (else (local.get $byte))))

  ;; 1 when the `len` bytes at `hay` hold the `needle_len` bytes at `needle` anywhere, ASCII case
  ;; ignored, else 0. A plain scan: titles and queries are short, and fuel is counted per instruction, so a
  ;; cleverer search would cost more in setup than it saves.
  (func $contains_folded (param $hay i32) (param $len i32) (param $needle i32) (param $needle_len i32)
                         (result i32)
    (local $start i32)
    (local $k i32)
    (if (i32.gt_u (local.get $needle_len) (local.get $len))
      (then (return (i32.const 0))))
    (block $none
      (loop $next_start
        (local.set $k (i32.const 0))
        (block $mismatch
          (loop $next_byte
            (if (i32.eq (local.get $k) (local.get $needle_len))
              (then (return (i32.const 1))))
            (br_if $mismatch
              (i32.ne
                (call $lower (i32.load8_u (i32.add (local.get $hay) (i32.add (local.get $start) (local.get $k)))))
                (call $lower (i32.load8_u (i32.add (local.get $needle) (local.get $k))))))
            (local.set $k (i32.add (local.get $k) (i32.const 1)))
            (br $next_byte)))
        (local.set $start (i32.add (local.get $start) (i32.const 1)))
        (br_if $none (i32.gt_u (local.get $start) (i32.sub (local.get $len) (local.get $needle_len))))
        (br $next_start)))
    (i32.const 0))

  ;; The hook: one f32 per candidate at `output`, in the engine's order. The query's pointer and length
  ;; head the input block; the records are 40 bytes each from input+8, the engine's score at +0 and the
  ;; title's pointer and length at +12 and +16.
  (func (export "qmd_score") (param $input i32) (param $count i32) (param $output i32) (result i32)
    (local $query i32)
    (local $query_len i32)
    (local $i i32)
    (local $record i32)
    (local $score f32)
    (local.set $query (i32.load (local.get $input)))
    (local.set $query_len (i32.load offset=4 (local.get $input)))
    (block $done
      (loop $each
        (br_if $done (i32.ge_u (local.get $i) (local.get $count)))
        (local.set $record (i32.add (i32.add (local.get $input) (i32.const 8))
                                    (i32.mul (local.get $i) (i32.const 40))))
        (local.set $score (f32.load (local.get $record)))
        (if (i32.and (i32.ne (local.get $query_len) (i32.const 0))
                     (call $contains_folded (i32.load offset=12 (local.get $record))
                                            (i32.load offset=16 (local.get $record))
                                            (local.get $query) (local.get $query_len)))
          (then
            ;; Capped here rather than left to the host's clamp, so that the score the plugin reports
            ;; (`--explain`) is the one it means.
            (local.set $score (f32.min (f32.add (local.get $score) (f32.const 0.2)) (f32.const 1.0)))))
        (f32.store (i32.add (local.get $output) (i32.mul (local.get $i) (i32.const 4))) (local.get $score))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $each)))
    (i32.const 0))
)
