;; strip-comments: a transform that removes HTML comments (`<!-- ... -->`) from a document before it is
;; chunked, so that commented-out drafts, editor markers and TODO notes are neither found by a search nor
;; embedded. An unterminated `<!--` keeps the rest of the text as it is (it is probably not a comment).
;; Lines inside a comment are removed with it, so line numbers of what follows shift: that is the
;; transform's meaning, and `get` still prints the file as it is on disk.
;;
;; It is written to plugins/ABI.md, version 1 (the transform hook), and imports nothing.
(module
  (memory (export "memory") 1)

  ;; The bump allocator's next free byte. Address 0 is never handed out (0 means "no room").
  (global $heap (mut i32) (i32.const 16))

  (func (export "qmd_abi_version") (result i32)
    (i32.const 1))

  ;; A pointer to `size` free bytes, 8-aligned, growing memory to fit; 0 when there is no room.
  (func $alloc (export "qmd_alloc") (param $size i32) (result i32)
    (local $ptr i32)
    (local $end i32)
    (local $pages i32)
    (local.set $ptr (i32.and (i32.add (global.get $heap) (i32.const 7)) (i32.const -8)))
    (local.set $end (i32.add (local.get $ptr) (local.get $size)))
    (if (i32.lt_u (local.get $end) (local.get $ptr))
      (then (return (i32.const 0))))
    (local.set $pages
      (i32.add (i32.shr_u (local.get $end) (i32.const 16))
               (i32.ne (i32.and (local.get $end) (i32.const 0xffff)) (i32.const 0))))
    (if (i32.gt_u (local.get $pages) (memory.size))
      (then
        (if (i32.eq (memory.grow (i32.sub (local.get $pages) (memory.size))) (i32.const -1))
          (then (return (i32.const 0))))))
    (global.set $heap (local.get $end))
    (local.get $ptr))

  ;; Where the `-->` closing a comment whose text starts at `from` ends (the index just past it), or -1.
  (func $comment_end (param $src i32) (param $from i32) (param $len i32) (result i32)
    (local $k i32)
    (local.set $k (local.get $from))
    (block $none
      (loop $next
        (br_if $none (i32.gt_u (i32.add (local.get $k) (i32.const 3)) (local.get $len)))
        (if (i32.and
              (i32.eq (i32.load16_u (i32.add (local.get $src) (local.get $k))) (i32.const 0x2d2d))  ;; "--"
              (i32.eq (i32.load8_u offset=2 (i32.add (local.get $src) (local.get $k))) (i32.const 0x3e)))  ;; ">"
          (then (return (i32.add (local.get $k) (i32.const 3)))))
        (local.set $k (i32.add (local.get $k) (i32.const 1)))
        (br $next)))
    (i32.const -1))

  ;; Copy `len` bytes from `src` to `dst` without the comments; returns the bytes written.
  (func $strip (param $src i32) (param $len i32) (param $dst i32) (result i32)
    (local $j i32)
    (local $n i32)
    (local $end i32)
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $j) (local.get $len)))
        (if (i32.and
              (i32.le_u (i32.add (local.get $j) (i32.const 4)) (local.get $len))
              (i32.eq (i32.load (i32.add (local.get $src) (local.get $j))) (i32.const 0x2d2d213c)))  ;; "<!--"
          (then
            (local.set $end (call $comment_end (local.get $src) (i32.add (local.get $j) (i32.const 4))
                                               (local.get $len)))
            (if (i32.ne (local.get $end) (i32.const -1))
              (then
                (local.set $j (local.get $end))
                (br $next)))))
        (i32.store8 (i32.add (local.get $dst) (local.get $n))
                    (i32.load8_u (i32.add (local.get $src) (local.get $j))))
        (local.set $n (i32.add (local.get $n) (i32.const 1)))
        (local.set $j (i32.add (local.get $j) (i32.const 1)))
        (br $next)))
    (local.get $n))

  ;; The hook: for each record (40 bytes each from input+8; the text's pointer and length at +4 and +8),
  ;; a fresh buffer as long as the text, the text copied into it without comments, and the (pointer,
  ;; length) pair of the result written at output + 8*i.
  (func (export "qmd_transform") (param $input i32) (param $count i32) (param $output i32) (result i32)
    (local $i i32)
    (local $record i32)
    (local $len i32)
    (local $dst i32)
    (block $done
      (loop $each
        (br_if $done (i32.ge_u (local.get $i) (local.get $count)))
        (local.set $record (i32.add (i32.add (local.get $input) (i32.const 8))
                                    (i32.mul (local.get $i) (i32.const 40))))
        (local.set $len (i32.load offset=8 (local.get $record)))
        (local.set $dst (call $alloc (local.get $len)))
        (if (i32.eqz (local.get $dst))
          (then (return (i32.const 1))))
        (i32.store (i32.add (local.get $output) (i32.mul (local.get $i) (i32.const 8))) (local.get $dst))
        (i32.store offset=4 (i32.add (local.get $output) (i32.mul (local.get $i) (i32.const 8)))
                   (call $strip (i32.load offset=4 (local.get $record)) (local.get $len) (local.get $dst)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $each)))
    (i32.const 0))
)
