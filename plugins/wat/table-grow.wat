;; `table-grow`: exports `handle` like an agent, but its core function grows a funcref
;; table by 10 000 elements at a time, forever. A refused `table.grow` (result -1) ends
;; in `unreachable`, so the host sees a trap either way: its table limit must stop it.
;;
;; Hand-written so that the table is the only thing that grows (Rust guests cannot
;; emit `table.grow`). Check with `wasm-tools validate` and `wasm-tools component wit`.
(component
  (core module $m
    (table $t 1 funcref)
    (memory (export "memory") 1)
    ;; Bump allocator for the canonical ABI: the host copies the input list here.
    (global $heap (mut i32) (i32.const 1024))

    (func (export "cabi_realloc")
      (param $old i32) (param $old_size i32) (param $align i32) (param $new_size i32)
      (result i32)
      (local $ptr i32)
      ;; ptr = align_up(heap, align)
      (local.set $ptr
        (i32.and
          (i32.add (global.get $heap) (i32.sub (local.get $align) (i32.const 1)))
          (i32.sub (i32.const 0) (local.get $align))))
      (global.set $heap (i32.add (local.get $ptr) (local.get $new_size)))
      (if (i32.gt_u (global.get $heap) (i32.mul (memory.size) (i32.const 65536)))
        (then
          (if (i32.eq
                (memory.grow
                  (i32.sub
                    (i32.add (i32.shr_u (global.get $heap) (i32.const 16)) (i32.const 1))
                    (memory.size)))
                (i32.const -1))
            (then unreachable))))
      (local.get $ptr))

    ;; handle: (input-ptr, input-len) -> result-ptr; never returns.
    (func (export "handle") (param i32 i32) (result i32)
      (loop $grow
        (if (i32.eq (table.grow $t (ref.null func) (i32.const 10000)) (i32.const -1))
          (then unreachable))
        (br $grow))
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
