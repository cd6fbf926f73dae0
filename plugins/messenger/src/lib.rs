//! `messenger` (world `agent`): drives `cortex:agent/messaging` from text commands, and
//! records the messages it receives, for the messaging tests and benchmarks.
//!
//! | input                      | what it does                                              |
//! |----------------------------|-----------------------------------------------------------|
//! | `send:TO:BODY`             | `send(TO, BODY, none)`; returns `sent`                    |
//! | `sendk:TO:KEY:BODY`        | `send(TO, BODY, some(KEY))`; returns `sent`               |
//! | `sendn:TO:N`               | N sends of `m<i>` to TO (benchmarks); returns `sent`      |
//! | `call:TO:BODY`             | `call(TO, BODY)`; returns the reply (or `none`)           |
//! | `chain:A,B,...`            | calls A with `chain:B,...`; the last one returns `end@<agent>` |
//! | `publish:TOPIC:BODY`       | `publish(TOPIC, BODY)`; returns `published`               |
//! | `spin`                     | loops until stopped (deadline tests)                      |
//! | `inbox`                    | the JSON array of message bodies received so far          |
//! | anything else              | a message: appended to `inbox/<agent>`; returns `got`     |
//!
//! A messaging error is returned as `Ok("error:<code>:<detail>")` with the SDK's codes
//! (`messaging-depth-exceeded`, ...), so tests see what the guest saw. While the config
//! value `fail` is `yes`, received messages are refused (error code `told-to-fail`), so
//! tests can make retries and dead letters. While `quiet` is `yes`, received messages are
//! taken without being recorded (benchmarks). With the config value `init_send` = an agent,
//! `init` sends it `from-init` and fails with the messaging error if that is refused.

use cortex_agent::{Agent, AgentError, documents, messaging};

struct Messenger;

fn reply(r: Result<String, messaging::Error>) -> Result<Option<Vec<u8>>, AgentError> {
    let text = match r {
        Ok(s) => s,
        Err(e) => {
            let e = AgentError::from(e);
            format!("error:{}:{}", e.code, e.message)
        }
    };
    Ok(Some(text.into_bytes()))
}

fn receive(body: &str) -> Result<Option<Vec<u8>>, AgentError> {
    if cortex_agent::config("fail").as_deref() == Some("yes") {
        return Err(AgentError::new("told-to-fail", format!("refusing {body:?}")));
    }
    if cortex_agent::config("quiet").as_deref() == Some("yes") {
        return Ok(Some(b"got".to_vec()));
    }
    let me = cortex_agent::whoami().agent;
    documents::update("inbox", &me, |old: Option<Vec<String>>| {
        let mut all = old.unwrap_or_default();
        all.push(body.to_owned());
        all
    })?;
    Ok(Some(b"got".to_vec()))
}

impl Agent for Messenger {
    fn init(config: Vec<(String, String)>) -> Result<(), AgentError> {
        match config.iter().find(|(k, _)| k == "init_send") {
            Some((_, to)) => Ok(messaging::send(to, b"from-init", None)?),
            None => Ok(()),
        }
    }

    fn handle(input: Vec<u8>) -> Result<Option<Vec<u8>>, AgentError> {
        let input = String::from_utf8(input)?;
        let (cmd, rest) = input.split_once(':').unwrap_or((input.as_str(), ""));
        match cmd {
            "send" => {
                let (to, body) = rest.split_once(':').ok_or_else(|| AgentError::bad_input("expected send:TO:BODY"))?;
                reply(messaging::send(to, body.as_bytes(), None).map(|()| "sent".to_owned()))
            }
            "sendk" => {
                let mut parts = rest.splitn(3, ':');
                let (Some(to), Some(key), Some(body)) = (parts.next(), parts.next(), parts.next()) else {
                    return Err(AgentError::bad_input("expected sendk:TO:KEY:BODY"));
                };
                reply(messaging::send(to, body.as_bytes(), Some(key)).map(|()| "sent".to_owned()))
            }
            "sendn" => {
                let (to, n) = rest.split_once(':').ok_or_else(|| AgentError::bad_input("expected sendn:TO:N"))?;
                let n: u32 = n.parse().map_err(|e| AgentError::bad_input(format!("bad count: {e}")))?;
                for i in 0..n {
                    if let Err(e) = messaging::send(to, format!("m{i}").as_bytes(), None) {
                        return reply(Err(e));
                    }
                }
                reply(Ok("sent".to_owned()))
            }
            "call" => {
                let (to, body) = rest.split_once(':').ok_or_else(|| AgentError::bad_input("expected call:TO:BODY"))?;
                reply(messaging::call(to, body.as_bytes()).map(|out| match out {
                    Some(b) => String::from_utf8_lossy(&b).into_owned(),
                    None => "none".to_owned(),
                }))
            }
            "chain" => {
                let Some((next, more)) = (!rest.is_empty()).then(|| rest.split_once(',').unwrap_or((rest, ""))) else {
                    return Ok(Some(format!("end@{}", cortex_agent::whoami().agent).into_bytes()));
                };
                reply(
                    messaging::call(next, format!("chain:{more}").as_bytes())
                        .map(|out| out.map_or_else(|| "none".to_owned(), |b| String::from_utf8_lossy(&b).into_owned())),
                )
            }
            "publish" => {
                let (topic, body) =
                    rest.split_once(':').ok_or_else(|| AgentError::bad_input("expected publish:TOPIC:BODY"))?;
                reply(messaging::publish(topic, body.as_bytes()).map(|()| "published".to_owned()))
            }
            "spin" => {
                let mut x: u64 = 1;
                loop {
                    x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                }
            }
            "inbox" => {
                let me = cortex_agent::whoami().agent;
                let seen = documents::get("inbox", &me)?.map_or_else(|| "[]".to_owned(), |d| d.value);
                Ok(Some(seen.into_bytes()))
            }
            _ => receive(&input),
        }
    }
}

cortex_agent::export_agent!(Messenger);
