;; `no-on-change`: an agent (it exports `init`) that forgets `on-change`, as a guide's world
;; without it would build one: the upload warns that watches will be refused. `handle`
;; answers ok with no output; `init` accepts any config.
;;
;; Hand-written so that the exports are exactly these two. Check with `wasm-tools validate`
;; and `wasm-tools component wit`.
(component
  (core module $m
    (memory (export "memory") 1)
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

    ;; ok(none): the result's tag and the option's tag, both 0.
    (func (export "handle") (param $ptr i32) (param $len i32) (result i32)
      (i32.store (i32.const 16) (i32.const 0))
      (i32.store (i32.const 20) (i32.const 0))
      (i32.const 16))

    ;; ok: the result's tag 0.
    (func (export "init") (param $ptr i32) (param $len i32) (result i32)
      (i32.store (i32.const 32) (i32.const 0))
      (i32.const 32))
  )
  (core instance $i (instantiate $m))

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
  (type $init-ty
    (func (param "config" (list (tuple string string))) (result (result (error $agent-error)))))
  (func $init (type $init-ty)
    (canon lift (core func $i "init") (memory (core memory $i "memory"))
      (realloc (core func $i "cabi_realloc"))))
  (export "init" (func $init))
)
