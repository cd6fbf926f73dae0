//! Admission of an uploaded component: is it a component, does it import only what the host
//! serves, and does it export what an agent must?
//!
//! Every refusal is a [`LoadError`] with a stable code and a message naming the reason
//! (the import, the export, the expected and found types, the bound and the size found).
//!
//! Before anything is compiled, [`check_code`] reads the code sections of every core module
//! in the component (a parse, no validation, no compilation) and refuses what would cost
//! too much to compile: see [`CodeBound`] and `[engine.compile]`.

use wasmtime::Engine;
use wasmtime::component::Component;
use wasmtime::component::types::{ComponentFunc, ComponentItem, Type};

use super::LoadError;
use super::compiler::CompileConfig;
use crate::capabilities::{SERVED_INTERFACES, UNSERVED_INTERFACES};

/// WASI preview 2 packages linked in (deny-by-default at run time).
const WASI_PACKAGES: &[&str] = &["cli", "clocks", "filesystem", "io", "random", "sockets"];

/// The signature every agent's `handle` export must have.
pub const HANDLE_SIG: &str = "func(list<u8>) -> result<option<list<u8>>, record { code: string, message: string }>";
/// The signature of the optional `init` export.
pub const INIT_SIG: &str = "func(list<tuple<string, string>>) -> result<_, record { code: string, message: string }>";
/// The signature of the optional `on-change` export.
pub const ON_CHANGE_SIG: &str = "func(list<record { seq: u64, collection: string, key: string, op: enum { put, delete }, revision: u64 }>) -> result<_, record { code: string, message: string }>";

/// Which world a component targets, judged by what it imports and exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum World {
    /// The full agent world.
    Agent,
    /// The stateless tool world.
    Tool,
}

/// First refusal by the bytes alone: not wasm, or a core module.
pub fn check_header(bytes: &[u8]) -> Result<(), LoadError> {
    const MAGIC: &[u8] = b"\0asm";
    if bytes.is_empty() {
        return Err(LoadError::NotAComponent("the module is empty".into()));
    }
    if bytes.len() < 8 || &bytes[..4] != MAGIC {
        return Err(LoadError::NotAComponent("not WebAssembly: the \\0asm header is missing".into()));
    }
    match bytes[4..8] {
        [1, 0, 0, 0] => Err(LoadError::NotAComponent(
            "a core WebAssembly module, not a component; build for wasm32-wasip2 or wrap it with `wasm-tools component new`"
                .into(),
        )),
        [_, _, 1, 0] => Ok(()),
        _ => Err(LoadError::NotAComponent("unknown WebAssembly binary version".into())),
    }
}

/// A static bound on an upload's code, exceeded: the component is refused before it is
/// compiled. Each variant has a stable [`code`](CodeBound::code).
#[derive(Debug, thiserror::Error)]
pub enum CodeBound {
    /// One function body is larger than `max_function_bytes`.
    #[error("function {function} of core module {module} has a body of {size} bytes, over the limit of {limit}")]
    FunctionTooLarge {
        /// Which core module of the component (1 for the first with code).
        module: usize,
        /// Index of the function among the module's bodies.
        function: u64,
        /// Its size.
        size: u64,
        /// The bound.
        limit: u64,
    },
    /// One function declares more locals than `max_function_locals`.
    #[error("function {function} of core module {module} declares {count} locals, over the limit of {limit}")]
    TooManyLocals {
        /// Which core module of the component (1 for the first with code).
        module: usize,
        /// Index of the function among the module's bodies.
        function: u64,
        /// Locals declared.
        count: u64,
        /// The bound.
        limit: u64,
    },
    /// All function bodies together are larger than `max_code_bytes`.
    #[error("the component has more than {limit} bytes of code")]
    CodeTooLarge {
        /// The bound.
        limit: u64,
    },
    /// More function bodies than `max_functions`.
    #[error("the component has more than {limit} functions")]
    TooManyFunctions {
        /// The bound.
        limit: u64,
    },
}

impl CodeBound {
    /// The stable code of this refusal.
    pub fn code(&self) -> &'static str {
        match self {
            CodeBound::FunctionTooLarge { .. } => "function_too_large",
            CodeBound::TooManyLocals { .. } => "too_many_locals",
            CodeBound::CodeTooLarge { .. } => "code_too_large",
            CodeBound::TooManyFunctions { .. } => "too_many_functions",
        }
    }
}

/// What [`check_code`] measured: the largest of each thing it bounds.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CodeSize {
    /// Bytes of the largest function body.
    pub largest_function: u64,
    /// Locals of the function that declares the most.
    pub most_locals: u64,
    /// Bytes of all function bodies.
    pub code_bytes: u64,
    /// Function bodies.
    pub functions: u64,
}

/// Refuse a component whose code exceeds a bound of `cfg`, by parsing its code sections
/// (nested components and core modules included) without compiling anything.
pub fn check_code(bytes: &[u8], cfg: &CompileConfig) -> Result<CodeSize, LoadError> {
    use wasmparser::{Parser, Payload};
    let invalid = |e: wasmparser::BinaryReaderError| LoadError::Invalid(format!("{e}"));
    let mut size = CodeSize::default();
    let mut module = 0usize;
    let mut function = 0u64;
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.map_err(invalid)? {
            Payload::CodeSectionStart { .. } => {
                module += 1;
                function = 0;
            }
            Payload::CodeSectionEntry(body) => {
                let bytes = body.range().len() as u64;
                if bytes > cfg.max_function_bytes {
                    let limit = cfg.max_function_bytes;
                    return Err(CodeBound::FunctionTooLarge { module, function, size: bytes, limit }.into());
                }
                let mut locals = 0u64;
                let mut reader = body.get_locals_reader().map_err(invalid)?;
                for _ in 0..reader.get_count() {
                    locals += u64::from(reader.read().map_err(invalid)?.0);
                    if locals > cfg.max_function_locals {
                        let limit = cfg.max_function_locals;
                        return Err(CodeBound::TooManyLocals { module, function, count: locals, limit }.into());
                    }
                }
                size.largest_function = size.largest_function.max(bytes);
                size.most_locals = size.most_locals.max(locals);
                size.code_bytes += bytes;
                size.functions += 1;
                function += 1;
                if size.code_bytes > cfg.max_code_bytes {
                    return Err(CodeBound::CodeTooLarge { limit: cfg.max_code_bytes }.into());
                }
                if size.functions > cfg.max_functions {
                    return Err(CodeBound::TooManyFunctions { limit: cfg.max_functions }.into());
                }
            }
            _ => {}
        }
    }
    Ok(size)
}

/// Whether an import name is served; `Err` names the import and why it is refused.
pub fn check_import(name: &str) -> Result<(), LoadError> {
    let unknown = || LoadError::UnknownImport { name: name.to_owned() };
    let (path, version) = name.split_once('@').unwrap_or((name, ""));
    let Some((package, interface)) = path.split_once('/') else { return Err(unknown()) };
    match package {
        // Outbound HTTP: linked for every agent, granted per deploy (`egress`); an agent
        // without a grant gets `HTTP-request-denied` at call time.
        "wasi:http" if matches!(interface, "outgoing-handler" | "types") && version.starts_with("0.2.") => Ok(()),
        "wasi:http" => Err(LoadError::DeniedImport {
            name: name.to_owned(),
            reason: "agents may import wasi:http/outgoing-handler and wasi:http/types @0.2 only".into(),
        }),
        p if p.strip_prefix("wasi:").is_some_and(|pkg| WASI_PACKAGES.contains(&pkg)) => {
            if version.starts_with("0.2.") {
                Ok(())
            } else {
                Err(unknown())
            }
        }
        "cortex:agent" if !version.starts_with("0.1.") => Err(unknown()),
        "cortex:agent" if SERVED_INTERFACES.contains(&interface) => Ok(()),
        "cortex:agent" if UNSERVED_INTERFACES.contains(&interface) => {
            Err(LoadError::UnservedImport { name: name.to_owned() })
        }
        _ => Err(unknown()),
    }
}

/// Render a component-model type the way the signatures above are written.
fn render(ty: &Type) -> String {
    match ty {
        Type::Bool => "bool".into(),
        Type::S8 => "s8".into(),
        Type::U8 => "u8".into(),
        Type::S16 => "s16".into(),
        Type::U16 => "u16".into(),
        Type::S32 => "s32".into(),
        Type::U32 => "u32".into(),
        Type::S64 => "s64".into(),
        Type::U64 => "u64".into(),
        Type::Float32 => "f32".into(),
        Type::Float64 => "f64".into(),
        Type::Char => "char".into(),
        Type::String => "string".into(),
        Type::List(l) => format!("list<{}>", render(&l.ty())),
        Type::Option(o) => format!("option<{}>", render(&o.ty())),
        Type::Result(r) => {
            let side = |t: Option<Type>| t.map_or_else(|| "_".to_owned(), |t| render(&t));
            format!("result<{}, {}>", side(r.ok()), side(r.err()))
        }
        Type::Tuple(t) => format!("tuple<{}>", t.types().map(|t| render(&t)).collect::<Vec<_>>().join(", ")),
        Type::Record(r) => format!(
            "record {{ {} }}",
            r.fields().map(|f| format!("{}: {}", f.name, render(&f.ty))).collect::<Vec<_>>().join(", ")
        ),
        Type::Enum(e) => format!("enum {{ {} }}", e.names().collect::<Vec<_>>().join(", ")),
        other => format!("{other:?}"),
    }
}

fn render_func(f: &ComponentFunc) -> String {
    // Parameter names are not part of a function's type in the component model.
    let params: Vec<String> = f.params().map(|(_, t)| render(&t)).collect();
    let results: Vec<String> = f.results().map(|t| render(&t)).collect();
    match results.as_slice() {
        [] => format!("func({})", params.join(", ")),
        [one] => format!("func({}) -> {one}", params.join(", ")),
        many => format!("func({}) -> ({})", params.join(", "), many.join(", ")),
    }
}

/// Check one export; `Ok(false)` when it is absent.
fn check_export(engine: &Engine, component: &Component, name: &str, want: &str) -> Result<bool, LoadError> {
    let ty = component.component_type();
    let Some(export) = ty.get_export(engine, name) else { return Ok(false) };
    let found = match &export.ty {
        ComponentItem::ComponentFunc(f) => render_func(f),
        ComponentItem::ComponentInstance(_) => "an instance (an exported interface)".into(),
        ComponentItem::Component(_) => "a nested component".into(),
        ComponentItem::Module(_) => "a core module".into(),
        ComponentItem::CoreFunc(_) => "a core function".into(),
        ComponentItem::Type(_) | ComponentItem::Resource(_) => "a type".into(),
    };
    if found != want {
        return Err(LoadError::WrongExportType { name: name.to_owned(), expected: want.to_owned(), found });
    }
    Ok(true)
}

/// What admission learned about a component.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Shape {
    /// The world it targets.
    pub world: World,
    /// Its import names.
    pub imports: Vec<String>,
    /// Its export names.
    pub exports: Vec<String>,
    /// Whether it exports `init`.
    pub has_init: bool,
    /// Whether it exports `on-change`.
    pub has_on_change: bool,
}

impl Shape {
    /// What an upload should tell its author: an agent (it exports `init` or `on-change`,
    /// or imports the agent interfaces) that lacks an export the host calls. A tool (only
    /// `handle`, no agent imports) gets none.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.world == World::Agent {
            if !self.has_on_change {
                w.push("exports handle but not on-change; watches will be refused".to_owned());
            }
            if !self.has_init {
                w.push("exports handle but not init; a deploy's config is not checked by the agent".to_owned());
            }
        }
        w
    }
}

/// Check a compiled component's imports and exports.
pub fn check_component(engine: &Engine, component: &Component) -> Result<Shape, LoadError> {
    let ty = component.component_type();
    let imports: Vec<String> = ty.imports(engine).map(|(n, _)| n.to_owned()).collect();
    let exports: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_owned()).collect();
    for name in &imports {
        check_import(name)?;
    }
    if !check_export(engine, component, "handle", HANDLE_SIG)? {
        return Err(LoadError::MissingExport {
            name: "handle".into(),
            found: if exports.is_empty() { "nothing".into() } else { exports.join(", ") },
        });
    }
    let has_init = check_export(engine, component, "init", INIT_SIG)?;
    let has_on_change = check_export(engine, component, "on-change", ON_CHANGE_SIG)?;
    let uses_agent_imports =
        imports.iter().any(|i| !i.starts_with("wasi:") && !i.contains("/runtime@") && !i.contains("/types@"));
    let world = if has_init || has_on_change || uses_agent_imports { World::Agent } else { World::Tool };
    Ok(Shape { world, imports, exports, has_init, has_on_change })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_are_sorted_into_served_denied_and_unknown() {
        assert!(check_import("wasi:cli/environment@0.2.0").is_ok());
        assert!(check_import("wasi:sockets/tcp@0.2.6").is_ok());
        assert!(check_import("cortex:agent/documents@0.1.0").is_ok());
        assert!(check_import("wasi:http/outgoing-handler@0.2.6").is_ok());
        assert!(check_import("wasi:http/types@0.2.0").is_ok());
        assert!(matches!(check_import("wasi:http/incoming-handler@0.2.6"), Err(LoadError::DeniedImport { .. })));
        assert!(matches!(
            check_import("wasi:http/outgoing-handler@0.3.0-rc-2025-09-16"),
            Err(LoadError::DeniedImport { .. })
        ));
        assert!(check_import("cortex:agent/graph@0.1.0").is_ok());
        assert!(check_import("cortex:agent/messaging@0.1.0").is_ok());
        assert!(matches!(check_import("cortex:agent/documents@0.2.0"), Err(LoadError::UnknownImport { .. })));
        assert!(matches!(check_import("wasi:cli/environment@0.3.0"), Err(LoadError::UnknownImport { .. })));
        assert!(matches!(check_import("evil:backdoor/shell"), Err(LoadError::UnknownImport { .. })));
        assert!(matches!(check_import("wasi:nn/graph@0.2.0"), Err(LoadError::UnknownImport { .. })));
    }

    #[test]
    fn an_agent_missing_a_hook_is_warned_and_a_tool_is_not() {
        let shape =
            |world, has_init, has_on_change| Shape { world, imports: vec![], exports: vec![], has_init, has_on_change };
        assert!(shape(World::Tool, false, false).warnings().is_empty());
        assert!(shape(World::Agent, true, true).warnings().is_empty());
        let w = shape(World::Agent, true, false).warnings();
        assert_eq!(w, vec!["exports handle but not on-change; watches will be refused".to_owned()]);
        let w = shape(World::Agent, false, true).warnings();
        assert!(w.len() == 1 && w[0].contains("not init"), "{w:?}");
    }

    #[test]
    fn header_check_names_core_modules_and_garbage() {
        assert!(matches!(check_header(b""), Err(LoadError::NotAComponent(m)) if m.contains("empty")));
        assert!(matches!(check_header(b"\0asm\x01\0\0\0"), Err(LoadError::NotAComponent(m)) if m.contains("core")));
        assert!(matches!(check_header(b"hello world!"), Err(LoadError::NotAComponent(m)) if m.contains("header")));
        assert!(check_header(b"\0asm\x0d\0\x01\0").is_ok());
    }
}
