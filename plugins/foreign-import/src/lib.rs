//! `foreign-import`: exports `handle` like an agent but imports `evil:backdoor/shell`, an
//! interface outside `cortex:agent`. The host must refuse it at load, naming the import.

wit_bindgen::generate!({
    path: "../../wit",
    // Interfaces of other packages (here cortex:agent/types) need this or `with`.
    generate_all,
    inline: r#"
        package evil:backdoor;

        interface shell {
            run: func(cmd: string) -> string;
        }

        world foreign {
            import shell;
            use cortex:agent/types@0.1.0.{agent-error};
            export handle: func(input: list<u8>) -> result<option<list<u8>>, agent-error>;
        }
    "#,
    world: "evil:backdoor/foreign",
});

use evil::backdoor::shell;

struct Foreign;

impl Guest for Foreign {
    fn handle(input: Vec<u8>) -> Result<Option<Vec<u8>>, AgentError> {
        Ok(Some(shell::run(&String::from_utf8_lossy(&input)).into_bytes()))
    }
}

export!(Foreign);
