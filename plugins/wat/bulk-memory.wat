;; `bulk-memory`: exports `handle` like an agent; the first byte of the input picks what it
;; does, for the tests of fuel accounting and deadlines (`tests/all/hostile.rs`).
;;
;; | input | behaviour                                                                  |
;; |-------|----------------------------------------------------------------------------|
;; | `l`   | burns 64 MiB of fuel (64 `memory.fill`s of 1 MiB), then loops forever      |
;; | `t`   | burns the same, then divides by zero (a trap)                              |
;; | `m`   | burns the same, then grows memory by 128 MiB (past a 64 MiB memory limit)  |
;; | `F`   | grows memory by 256 MiB and fills all of it in one `memory.fill`; returns ok |
;;
;; A `memory.fill` costs one unit of fuel per byte, charged before it runs, so the burn is
;; a known amount of work whatever the machine's speed; none of `l`, `t` and `m` calls a
;; function after it, so its fuel is only counted if the host counts what a guest burns
;; between calls. Anything else is `unreachable`.
;;
;; Hand-written so that nothing but the operation under test runs (no allocator, no libc).
;; Check with `wasm-tools validate` and `wasm-tools component wit`.
(component
  (core module $m
    ;; 1 MiB: the burn fills it again and again.
    (memory (export "memory") 16)
    ;; Bump allocator for the canonical ABI: the host copies the input list here.
    (global $heap (mut i32) (i32.const 1024))

    (func (export "cabi_realloc")
      (param $old i32) (param $old_size i32) (param $align i32) (param $new_size i32)
      (result i32)
      (local $ptr i32)
      (local.set $ptr
        (i32.and
          (i32.add (global.get $heap) (i32.sub (local.get $align) (i32.const 1)))
          (i32.sub (i32.const 0) (local.get $align))))
      (global.set $heap (i32.add (local.get $ptr) (local.get $new_size)))
      (local.get $ptr))

    ;; handle: (input-ptr, input-len) -> result-ptr.
    (func (export "handle") (param $ptr i32) (param $len i32) (result i32)
      (local $cmd i32)
      (local $zero i32)
      (local.set $cmd (i32.load8_u (local.get $ptr)))
      (if (i32.eq (local.get $cmd) (i32.const 0x46)) ;; F
        (then
          (if (i32.eq (memory.grow (i32.const 4096)) (i32.const -1)) (then unreachable))
          (memory.fill (i32.const 0) (i32.const 0xa5) (i32.mul (memory.size) (i32.const 65536)))
          ;; ok(none): the result's discriminant and the option's, at 16 and 20.
          (i32.store (i32.const 16) (i32.const 0))
          (i32.store (i32.const 20) (i32.const 0))
          (return (i32.const 16))))
      ;; The burn: 64 fills of the first MiB, in this function (a call would write the
      ;; fuel count back to the store on return).
      (block $burnt
        (loop $again
          (memory.fill (i32.const 0) (i32.const 0x5a) (i32.const 1048576))
          (local.set $zero (i32.add (local.get $zero) (i32.const 1)))
          (br_if $again (i32.lt_u (local.get $zero) (i32.const 64)))))
      (local.set $zero (i32.sub (local.get $zero) (i32.const 64)))
      (if (i32.eq (local.get $cmd) (i32.const 0x6c)) ;; l
        (then (loop $forever (br $forever))))
      (if (i32.eq (local.get $cmd) (i32.const 0x74)) ;; t
        (then (drop (i32.div_u (i32.const 1) (local.get $zero)))))
      (if (i32.eq (local.get $cmd) (i32.const 0x6d)) ;; m
        (then (drop (memory.grow (i32.const 2048)))))
      unreachable)
  )
  (core instance $i (instantiate $m))

  ;; As in components built from the `tool` world: `agent-error` comes from the
  ;; type-only import of cortex:agent/types and is re-imported by name at the top level.
  (import "cortex:agent/types@0.1.0" (instance $types
    (type $agent-error-def (record (field "code" string) (field "message" string)))
    (export "agent-error" (type (eq $agent-error-def)))))
  (alias export $types "agent-error" (type $types-agent-error))
  (import "agent-error" (type $agent-error (eq $types-agent-error)))
  (type $handle-ty
    (func (param "input" (list u8)) (result (result (option (list u8)) (error $agent-error)))))
  (func $handle (type $handle-ty)
    (canon lift (core func $i "handle") (memory (core memory $i "memory"))
      (realloc (core func $i "cabi_realloc"))))
  (export "handle" (func $handle))
)
