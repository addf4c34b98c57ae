;; path-boost: a scorer that ranks notes kept in a `projects` folder higher.
;;
;; A candidate whose path holds the segment `/projects/` gets its engine score times 1.5, capped at 1.0;
;; every other candidate keeps its score. The path qmdd passes is `collection/path/in/collection.md`, so
;; this one test covers both `notes/projects/alpha.md` (a `projects/` folder right after the collection
;; name) and `notes/work/projects/beta.md` (one deeper down). It deliberately does not fire for a
;; collection that is itself named `projects` (`projects/alpha.md`): that would boost a whole collection,
;; which is what the engine's collection filter is for. Matching is byte-exact: `Projects/` does not count.
;;
;; Multiplying rather than adding keeps the engine's order among the boosted notes and leaves a hit the
;; engine thought poor still poor: a weak match in projects/ does not jump over a strong one elsewhere.
;;
;; It is written to plugins/ABI.md, version 1, and imports nothing.
(module
  ;; One page to start; qmd_alloc grows it when a batch needs more.
  (memory (export "memory") 1)

  ;; The segment looked for. Kept away from address 0, so that no pointer this module hands out is 0
  ;; (which qmd_alloc's caller reads as "no room").
  (data (i32.const 16) "/projects/")
  (global $needle i32 (i32.const 16))
  (global $needle_len i32 (i32.const 10))

  ;; The bump allocator's next free byte: the first 8-aligned address after the data. It never frees:
  ;; every call gets a fresh instance, so a batch's memory is dropped with it.
  (global $heap (mut i32) (i32.const 32))

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

  ;; 1 when the `len` bytes at `hay` hold the `needle_len` bytes at `needle` anywhere, else 0. A plain
  ;; scan: paths and the needle are short, and fuel is counted per instruction, so a cleverer search
  ;; would cost more in setup than it saves.
  (func $contains (param $hay i32) (param $len i32) (param $needle i32) (param $needle_len i32)
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
              (i32.ne (i32.load8_u (i32.add (local.get $hay) (i32.add (local.get $start) (local.get $k))))
                      (i32.load8_u (i32.add (local.get $needle) (local.get $k)))))
            (local.set $k (i32.add (local.get $k) (i32.const 1)))
            (br $next_byte)))
        (local.set $start (i32.add (local.get $start) (i32.const 1)))
        (br_if $none (i32.gt_u (local.get $start) (i32.sub (local.get $len) (local.get $needle_len))))
        (br $next_start)))
    (i32.const 0))

  ;; The hook: one f32 per candidate at `output`, in the engine's order. The records are 40 bytes each
  ;; from input+8; the engine's score is at +0, the path's pointer and length at +20 and +24.
  (func (export "qmd_score") (param $input i32) (param $count i32) (param $output i32) (result i32)
    (local $i i32)
    (local $record i32)
    (local $score f32)
    (block $done
      (loop $each
        (br_if $done (i32.ge_u (local.get $i) (local.get $count)))
        (local.set $record (i32.add (i32.add (local.get $input) (i32.const 8))
                                    (i32.mul (local.get $i) (i32.const 40))))
        (local.set $score (f32.load (local.get $record)))
        (if (call $contains (i32.load offset=20 (local.get $record)) (i32.load offset=24 (local.get $record))
                            (global.get $needle) (global.get $needle_len))
          (then
            ;; Capped here rather than left to the host's clamp, so that the score the plugin reports
            ;; (`--explain`) is the one it means.
            (local.set $score (f32.min (f32.mul (local.get $score) (f32.const 1.5)) (f32.const 1.0)))))
        (f32.store (i32.add (local.get $output) (i32.mul (local.get $i) (i32.const 4))) (local.get $score))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $each)))
    (i32.const 0))
)
