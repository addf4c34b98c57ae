;; drop-drafts: a filter that keeps unfinished notes out of results.
;;
;; A candidate is dropped when
;;   - a component of its path starts with `draft`: `notes/drafts/x.md`, `notes/draft-plan.md`,
;;     `notes/work/draft/y.md`; or
;;   - its title starts with `Draft` or `DRAFT:` (`Draft: gamma`, `Draft plan`, `DRAFT: launch`).
;; Everything else is kept.
;;
;; The tests are prefixes on purpose: they are what people write when they mark a draft, and a prefix
;; is cheap and predictable. The price is that `drafting-guide.md` or a title `Drafting contracts` is
;; dropped too; copy this file and tighten it if that matters in your notes. The path's first component is
;; the collection name, so a collection named `drafts` is dropped whole, which is usually what it is for.
;; Matching is byte-exact, case included: `Drafts/` and a title `draft notes` are kept.
;;
;; It is written to plugins/ABI.md, version 1, and imports nothing.
(module
  ;; One page to start; qmd_alloc grows it when a batch needs more.
  (memory (export "memory") 1)

  ;; The prefixes. Kept away from address 0, so that no pointer this module hands out is 0 (which
  ;; qmd_alloc's caller reads as "no room").
  (data (i32.const 16) "draft")
  (data (i32.const 24) "Draft")
  (data (i32.const 32) "DRAFT:")

  ;; The bump allocator's next free byte: the first 8-aligned address after the data. It never frees:
  ;; every call gets a fresh instance, so a batch's memory is dropped with it.
  (global $heap (mut i32) (i32.const 40))

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

  ;; 1 when the `len` bytes at `text` begin with the `prefix_len` bytes at `prefix`, else 0.
  (func $starts_with (param $text i32) (param $len i32) (param $prefix i32) (param $prefix_len i32)
                     (result i32)
    (local $k i32)
    (if (i32.lt_u (local.get $len) (local.get $prefix_len))
      (then (return (i32.const 0))))
    (block $matched
      (loop $next_byte
        (br_if $matched (i32.eq (local.get $k) (local.get $prefix_len)))
        (if (i32.ne (i32.load8_u (i32.add (local.get $text) (local.get $k)))
                    (i32.load8_u (i32.add (local.get $prefix) (local.get $k))))
          (then (return (i32.const 0))))
        (local.set $k (i32.add (local.get $k) (i32.const 1)))
        (br $next_byte)))
    (i32.const 1))

  ;; 1 when some component of the path (the text at the start or just after a `/`) starts with `draft`.
  ;; Each component is tried once, at its first byte; the bytes in between only look for the next `/`.
  (func $draft_component (param $path i32) (param $len i32) (result i32)
    (local $at i32)
    (block $done
      (loop $component
        (if (call $starts_with (i32.add (local.get $path) (local.get $at)) (i32.sub (local.get $len) (local.get $at))
                               (i32.const 16) (i32.const 5))  ;; "draft"
          (then (return (i32.const 1))))
        ;; On to just past the next `/`, or out at the end of the path.
        (loop $to_slash
          (br_if $done (i32.ge_u (local.get $at) (local.get $len)))
          (local.set $at (i32.add (local.get $at) (i32.const 1)))
          (br_if $component
            (i32.eq (i32.load8_u (i32.add (local.get $path) (i32.sub (local.get $at) (i32.const 1))))
                    (i32.const 0x2f)))  ;; '/'
          (br $to_slash))))
    (i32.const 0))

  ;; The hook: one byte per candidate at `output` (1 keep, 0 drop), in the engine's order. The records
  ;; are 40 bytes each from input+8; the title's pointer and length are at +12 and +16, the path's at +20
  ;; and +24.
  (func (export "qmd_filter") (param $input i32) (param $count i32) (param $output i32) (result i32)
    (local $i i32)
    (local $record i32)
    (local $title i32)
    (local $title_len i32)
    (local $drop i32)
    (block $done
      (loop $each
        (br_if $done (i32.ge_u (local.get $i) (local.get $count)))
        (local.set $record (i32.add (i32.add (local.get $input) (i32.const 8))
                                    (i32.mul (local.get $i) (i32.const 40))))
        (local.set $title (i32.load offset=12 (local.get $record)))
        (local.set $title_len (i32.load offset=16 (local.get $record)))
        (local.set $drop
          (i32.or
            (i32.or (call $starts_with (local.get $title) (local.get $title_len)
                                       (i32.const 24) (i32.const 5))   ;; "Draft"
                    (call $starts_with (local.get $title) (local.get $title_len)
                                       (i32.const 32) (i32.const 6)))  ;; "DRAFT:"
            (call $draft_component (i32.load offset=20 (local.get $record))
                                   (i32.load offset=24 (local.get $record)))))
        ;; Exactly 0 or 1: any other byte makes the whole call a failure (ABI.md, "The output").
        (i32.store8 (i32.add (local.get $output) (local.get $i)) (i32.eqz (local.get $drop)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $each)))
    (i32.const 0))
)
