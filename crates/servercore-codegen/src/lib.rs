//! Build-time packet code generation for servercore: the course's
//! `PacketGenerator`, as a library for `build.rs`.
//!
//! From a `.proto` file this crate
//! 1. compiles it with [`protox`] (pure Rust: no system `protoc`),
//! 2. runs [`prost_build`] on the file descriptor set (the message structs),
//! 3. assigns packet ids from 1000 (configurable) to the `C_` and `S_`
//!    messages, in the order they appear (other messages, like `Player`,
//!    are plain types and get no id),
//! 4. writes `<package>.packets.rs` beside prost's `<package>.rs` with:
//!    - `PacketId`, an enum of every id (`TryFrom<u16>`, `name()`), and the
//!      id lists `ALL_IDS`, `SERVER_RECEIVES_IDS` (`C_`) and
//!      `CLIENT_RECEIVES_IDS` (`S_`);
//!    - `impl servercore::packet::Packet` (the `ID` and `NAME` constants)
//!      for each packet message;
//!    - `ServerPacket` / `ClientPacket`: the decoded packets one side
//!      receives, with `decode(id, body)` and `dispatch(handler, session)`;
//!    - `ServerHandler` (one `handle_c_*` method per `C_` message) and
//!      `ClientHandler` (one `handle_s_*` per `S_` message), whose default
//!      methods answer with `DispatchError::Unexpected`;
//!    - `dispatch_server(handler, session, id, body)` and
//!      `dispatch_client(...)`, which decode with prost and call the typed
//!      method (`DispatchError::Decode` for a bad body,
//!      `DispatchError::UnknownId` for an id the protocol lacks,
//!      `DispatchError::Unexpected` for the other side's messages);
//!    - `make_packet(&msg) -> Bytes` / `try_make_packet`, the typed builders
//!      over servercore's pooled writer.
//!
//! Adding a message to the `.proto` is then the only step to get its id, its
//! handler method and its builder.
//!
//! ```no_run
//! // In build.rs's `main`:
//! servercore_codegen::Generator::new()
//!     .compile(&["proto/protocol.proto"], &["proto"])
//!     .expect("protocol.proto");
//! ```
//!
//! ```ignore
//! // lib.rs
//! include!(concat!(env!("OUT_DIR"), "/protocol.rs"));
//! include!(concat!(env!("OUT_DIR"), "/protocol.packets.rs"));
//! ```

use std::collections::HashSet;
use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};

use heck::{ToSnakeCase, ToUpperCamelCase};
use prost_types::FileDescriptorSet;

/// The id of the first packet of a protocol, as in the course.
pub const DEFAULT_FIRST_ID: u16 = 1000;

/// Everything that can go wrong while generating.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The `.proto` did not parse or check.
    #[error("protobuf compilation failed: {0}")]
    Protox(#[from] Box<protox::Error>),
    /// prost-build failed, or a file could not be written.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// The protocol cannot be turned into packets (too many ids, packets in
    /// several packages, no output directory, ...).
    #[error("{0}")]
    Invalid(String),
}

/// Which side sends a packet, from its name prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// `C_`: client to server; the server handles it.
    ClientToServer,
    /// `S_`: server to client; the client handles it.
    ServerToClient,
}

impl Direction {
    /// The direction named by a message's prefix, or `None` for a message
    /// that is not a packet.
    pub fn of(message_name: &str) -> Option<Direction> {
        if message_name.len() > 2 && message_name.starts_with("C_") {
            Some(Direction::ClientToServer)
        } else if message_name.len() > 2 && message_name.starts_with("S_") {
            Some(Direction::ServerToClient)
        } else {
            None
        }
    }
}

/// One packet message and the names generated for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketDef {
    /// The assigned id.
    pub id: u16,
    /// The message name in the `.proto` (`C_LOGIN`).
    pub proto_name: String,
    /// The Rust type prost generates for it (`CLogin`).
    pub rust_name: String,
    /// The handler method (`handle_c_login`).
    pub method: String,
    /// Who sends it.
    pub direction: Direction,
    /// The message's leading comment in the `.proto`, if any.
    pub doc: Option<String>,
}

/// The packets found in a file descriptor set, with their package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Protocol {
    /// The protobuf package of the packet messages (`protocol`), empty for
    /// none.
    pub package: String,
    /// The packets, in id order.
    pub packets: Vec<PacketDef>,
}

/// What [`Generator::compile`] wrote.
#[derive(Debug, Clone)]
pub struct Output {
    /// The protocol that was generated.
    pub protocol: Protocol,
    /// prost's message file (`OUT_DIR/protocol.rs`).
    pub messages_file: PathBuf,
    /// The packet file (`OUT_DIR/protocol.packets.rs`).
    pub packets_file: PathBuf,
}

/// Configures and runs the generation; see the [crate docs](crate).
#[derive(Debug)]
pub struct Generator {
    first_id: u16,
    servercore_path: String,
    out_dir: Option<PathBuf>,
    prost: prost_build::Config,
    emit_rerun: bool,
}

impl Default for Generator {
    fn default() -> Self {
        Generator::new()
    }
}

impl Generator {
    /// Ids from 1000, the output in `OUT_DIR`, servercore at `::servercore`.
    pub fn new() -> Generator {
        Generator {
            first_id: DEFAULT_FIRST_ID,
            servercore_path: "::servercore".to_owned(),
            out_dir: None,
            prost: prost_build::Config::new(),
            emit_rerun: true,
        }
    }

    /// The id of the first packet (default 1000).
    pub fn first_id(&mut self, id: u16) -> &mut Generator {
        self.first_id = id;
        self
    }

    /// The path under which the generated code names servercore (default
    /// `::servercore`; `crate` when generating inside servercore itself).
    pub fn servercore_path(&mut self, path: impl Into<String>) -> &mut Generator {
        self.servercore_path = path.into();
        self
    }

    /// Where to write (default: the `OUT_DIR` of the build script).
    pub fn out_dir(&mut self, dir: impl Into<PathBuf>) -> &mut Generator {
        self.out_dir = Some(dir.into());
        self
    }

    /// Whether to print `cargo:rerun-if-changed` for the `.proto` files
    /// (default: yes).
    pub fn emit_rerun_if_changed(&mut self, yes: bool) -> &mut Generator {
        self.emit_rerun = yes;
        self
    }

    /// The prost-build configuration, for attributes, `bytes` fields and the
    /// like. Its output directory is overridden by [`Generator::out_dir`].
    pub fn prost_config(&mut self) -> &mut prost_build::Config {
        &mut self.prost
    }

    /// Compiles `protos` (looked up in `includes`), writes prost's message
    /// file and the packet file, and returns where.
    ///
    /// Ids follow the files in dependency order (imports first), then the
    /// messages in the order they appear.
    pub fn compile(
        &mut self,
        protos: &[impl AsRef<Path>],
        includes: &[impl AsRef<Path>],
    ) -> Result<Output, Error> {
        let out_dir = match &self.out_dir {
            Some(dir) => dir.clone(),
            None => std::env::var_os("OUT_DIR")
                .map(PathBuf::from)
                .ok_or_else(|| Error::Invalid("OUT_DIR is not set; call out_dir()".into()))?,
        };

        let mut compiler = protox::Compiler::new(includes).map_err(Box::new)?;
        compiler.include_source_info(true).include_imports(true);
        compiler.open_files(protos).map_err(Box::new)?;
        if self.emit_rerun {
            for file in compiler.files() {
                if let Some(path) = file.path() {
                    println!("cargo:rerun-if-changed={}", path.display());
                }
            }
        }
        let fds = compiler.file_descriptor_set();
        let own_files: HashSet<String> = compiler
            .files()
            .filter(|file| !file.is_import())
            .map(|file| file.name().to_owned())
            .collect();

        let protocol = find_packets(&fds, |name| own_files.contains(name), self.first_id)?;

        self.prost.out_dir(&out_dir);
        self.prost.compile_fds(fds)?;

        let stem = if protocol.package.is_empty() {
            "_".to_owned()
        } else {
            protocol.package.clone()
        };
        let messages_file = out_dir.join(format!("{stem}.rs"));
        let messages = std::fs::read_to_string(&messages_file)?;
        for packet in &protocol.packets {
            if !messages.contains(&format!("pub struct {} {{", packet.rust_name)) {
                return Err(Error::Invalid(format!(
                    "prost did not generate `{}` for message {} in {}",
                    packet.rust_name,
                    packet.proto_name,
                    messages_file.display()
                )));
            }
        }

        let source = protos
            .iter()
            .map(|path| path.as_ref().display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let code = render(&protocol, &self.servercore_path, &source);
        let packets_file = out_dir.join(format!("{stem}.packets.rs"));
        write_if_changed(&packets_file, &code)?;
        Ok(Output {
            protocol,
            messages_file,
            packets_file,
        })
    }
}

fn write_if_changed(path: &Path, content: &str) -> io::Result<()> {
    if std::fs::read_to_string(path).is_ok_and(|old| old == content) {
        return Ok(());
    }
    std::fs::write(path, content)
}

/// The Rust type name prost gives a message.
pub fn rust_type_name(message_name: &str) -> String {
    let name = message_name.to_upper_camel_case();
    match name.as_str() {
        "Self" => "Self_".to_owned(),
        _ => name,
    }
}

/// The handler method name for a packet message (`C_LOGIN` ->
/// `handle_c_login`).
pub fn handler_method_name(message_name: &str) -> String {
    format!("handle_{}", message_name.to_snake_case())
}

/// Finds the packet messages of the files `is_own` accepts, in file order
/// then message order, and numbers them from `first_id`.
pub fn find_packets(
    fds: &FileDescriptorSet,
    is_own: impl Fn(&str) -> bool,
    first_id: u16,
) -> Result<Protocol, Error> {
    let mut packets = Vec::new();
    let mut package: Option<String> = None;
    let mut next_id = first_id as u32;
    for file in fds.file.iter().filter(|file| is_own(file.name())) {
        for (index, message) in file.message_type.iter().enumerate() {
            let name = message.name();
            let Some(direction) = Direction::of(name) else {
                continue;
            };
            match &package {
                None => package = Some(file.package().to_owned()),
                Some(first) if first != file.package() => {
                    return Err(Error::Invalid(format!(
                        "packet messages must share one package: {name} is in `{}`, \
                         earlier ones in `{first}`",
                        file.package()
                    )));
                }
                Some(_) => {}
            }
            let id = u16::try_from(next_id).map_err(|_| {
                Error::Invalid(format!("packet {name} would get id {next_id}, above 65535"))
            })?;
            next_id += 1;
            packets.push(PacketDef {
                id,
                proto_name: name.to_owned(),
                rust_name: rust_type_name(name),
                method: handler_method_name(name),
                direction,
                doc: leading_comment(file, index),
            });
        }
    }
    let mut seen = HashSet::new();
    for packet in &packets {
        if !seen.insert(packet.rust_name.as_str()) {
            return Err(Error::Invalid(format!(
                "two packet messages map to the Rust name {}",
                packet.rust_name
            )));
        }
    }
    Ok(Protocol {
        package: package.unwrap_or_default(),
        packets,
    })
}

/// The comment before message number `index` of `file`.
fn leading_comment(file: &prost_types::FileDescriptorProto, index: usize) -> Option<String> {
    // Path of a top-level message: [4 (message_type), index].
    let path = [4, index as i32];
    let info = file.source_code_info.as_ref()?;
    let location = info.location.iter().find(|loc| loc.path == path)?;
    let comment = location.leading_comments.as_deref()?.trim();
    (!comment.is_empty()).then(|| comment.to_owned())
}

fn direction_text(direction: Direction) -> &'static str {
    match direction {
        Direction::ClientToServer => "client to server",
        Direction::ServerToClient => "server to client",
    }
}

fn doc_lines(out: &mut String, indent: &str, text: &str) {
    for line in text.lines() {
        let line = line.trim_end();
        if line.is_empty() {
            let _ = writeln!(out, "{indent}///");
        } else {
            let _ = writeln!(out, "{indent}/// {}", line.trim_start());
        }
    }
}

/// Renders the packet file for `protocol`. `sc` is the path of servercore
/// (`::servercore`), `source` names the `.proto` in the header comment.
pub fn render(protocol: &Protocol, sc: &str, source: &str) -> String {
    let packets = &protocol.packets;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "// @generated by servercore-codegen from {source}. Do not edit: change the .proto."
    );
    o.push('\n');

    // --- PacketId -------------------------------------------------------
    o.push_str(
        "/// Every packet id of the protocol, numbered in message order.\n\
         #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]\n",
    );
    if !packets.is_empty() {
        o.push_str("#[repr(u16)]\n");
    }
    o.push_str("pub enum PacketId {\n");
    for p in packets {
        let _ = writeln!(
            o,
            "    /// `{}` ({}).\n    {} = {},",
            p.proto_name,
            direction_text(p.direction),
            p.rust_name,
            p.id
        );
    }
    o.push_str("}\n\n");

    let _ = writeln!(o, "impl PacketId {{");
    let _ = writeln!(o, "    /// Every id, in id order.");
    let _ = writeln!(o, "    pub const ALL: [PacketId; {}] = [", packets.len());
    for p in packets {
        let _ = writeln!(o, "        PacketId::{},", p.rust_name);
    }
    o.push_str("    ];\n\n");
    o.push_str(
        "    /// The id as written in the packet header.\n\
         \x20   pub const fn as_u16(self) -> u16 {\n\
         \x20       match self {\n",
    );
    for p in packets {
        let _ = writeln!(o, "            PacketId::{} => {},", p.rust_name, p.id);
    }
    o.push_str("        }\n    }\n\n");
    o.push_str(
        "    /// The packet with header id `id`, if the protocol has one.\n\
         \x20   pub const fn from_u16(id: u16) -> ::core::option::Option<PacketId> {\n\
         \x20       match id {\n",
    );
    for p in packets {
        let _ = writeln!(
            o,
            "            {} => ::core::option::Option::Some(PacketId::{}),",
            p.id, p.rust_name
        );
    }
    o.push_str(
        "            _ => ::core::option::Option::None,\n\
         \x20       }\n\
         \x20   }\n\n",
    );
    o.push_str(
        "    /// The message name as written in the `.proto`.\n\
         \x20   pub const fn name(self) -> &'static str {\n\
         \x20       match self {\n",
    );
    for p in packets {
        let _ = writeln!(
            o,
            "            PacketId::{} => \"{}\",",
            p.rust_name, p.proto_name
        );
    }
    o.push_str("        }\n    }\n\n");
    o.push_str(
        "    /// True for `C_` packets (client to server), false for `S_` ones.\n\
         \x20   pub const fn is_client_to_server(self) -> bool {\n\
         \x20       match self {\n",
    );
    for p in packets {
        let _ = writeln!(
            o,
            "            PacketId::{} => {},",
            p.rust_name,
            p.direction == Direction::ClientToServer
        );
    }
    o.push_str("        }\n    }\n}\n\n");

    let _ = write!(
        o,
        "impl ::core::convert::From<PacketId> for u16 {{\n\
         \x20   fn from(id: PacketId) -> u16 {{\n\
         \x20       id.as_u16()\n\
         \x20   }}\n\
         }}\n\n\
         impl ::core::convert::TryFrom<u16> for PacketId {{\n\
         \x20   type Error = {sc}::packet::DispatchError;\n\n\
         \x20   fn try_from(id: u16) -> ::core::result::Result<PacketId, Self::Error> {{\n\
         \x20       PacketId::from_u16(id).ok_or({sc}::packet::DispatchError::UnknownId(id))\n\
         \x20   }}\n\
         }}\n\n\
         impl ::core::fmt::Display for PacketId {{\n\
         \x20   fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {{\n\
         \x20       f.write_str(self.name())\n\
         \x20   }}\n\
         }}\n\n"
    );

    let id_list = |direction: Option<Direction>| -> String {
        packets
            .iter()
            .filter(|p| direction.is_none_or(|d| d == p.direction))
            .map(|p| p.id.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = write!(
        o,
        "/// Every packet id, in id order.\n\
         pub const ALL_IDS: &[u16] = &[{}];\n\n\
         /// The ids the server receives (`C_` packets): the known-id set of a\n\
         /// server's `PacketConfig`.\n\
         pub const SERVER_RECEIVES_IDS: &[u16] = &[{}];\n\n\
         /// The ids the client receives (`S_` packets).\n\
         pub const CLIENT_RECEIVES_IDS: &[u16] = &[{}];\n\n",
        id_list(None),
        id_list(Some(Direction::ClientToServer)),
        id_list(Some(Direction::ServerToClient)),
    );

    // --- Packet impls ---------------------------------------------------
    for p in packets {
        let _ = write!(
            o,
            "impl {sc}::packet::Packet for {} {{\n\
             \x20   const ID: u16 = {};\n\
             \x20   const NAME: &'static str = \"{}\";\n\
             }}\n\n",
            p.rust_name, p.id, p.proto_name
        );
    }

    // --- Builders ---------------------------------------------------------
    let _ = write!(
        o,
        "/// Builds a packet (header and protobuf body) from any message of the\n\
         /// protocol, in the calling thread's pooled chunk.\n\
         ///\n\
         /// # Panics\n\
         /// If the packet would exceed 65535 bytes; see [`try_make_packet`].\n\
         pub fn make_packet<M: {sc}::packet::Packet>(msg: &M) -> ::bytes::Bytes {{\n\
         \x20   {sc}::packet::make_packet(msg)\n\
         }}\n\n\
         /// Builds a packet like [`make_packet`], or says it is too large.\n\
         pub fn try_make_packet<M: {sc}::packet::Packet>(\n\
         \x20   msg: &M,\n\
         ) -> ::core::result::Result<::bytes::Bytes, {sc}::packet::PacketTooLarge> {{\n\
         \x20   {sc}::packet::try_make_packet(msg)\n\
         }}\n\n"
    );

    render_side(&mut o, packets, sc, Direction::ClientToServer);
    render_side(&mut o, packets, sc, Direction::ServerToClient);
    o
}

/// The received-packet enum, handler trait and dispatch of one side.
fn render_side(o: &mut String, packets: &[PacketDef], sc: &str, receives: Direction) {
    let (side, enum_name, trait_name, dispatch, sender) = match receives {
        Direction::ClientToServer => (
            "server",
            "ServerPacket",
            "ServerHandler",
            "dispatch_server",
            "C_",
        ),
        Direction::ServerToClient => (
            "client",
            "ClientPacket",
            "ClientHandler",
            "dispatch_client",
            "S_",
        ),
    };
    let err = format!("{sc}::packet::DispatchError");
    let result = format!("{sc}::packet::DispatchResult");
    let mine: Vec<&PacketDef> = packets.iter().filter(|p| p.direction == receives).collect();

    // Enum of decoded packets.
    let _ = writeln!(
        o,
        "/// A packet the {side} receives (`{sender}` messages), decoded."
    );
    o.push_str(
        "#[derive(Clone, PartialEq, Debug)]\n\
         #[allow(clippy::large_enum_variant, clippy::derive_partial_eq_without_eq)]\n",
    );
    let _ = writeln!(o, "pub enum {enum_name} {{");
    for p in &mine {
        let _ = writeln!(
            o,
            "    /// `{}` (id {}).\n    {}({}),",
            p.proto_name, p.id, p.rust_name, p.rust_name
        );
    }
    o.push_str("}\n\n");

    let _ = writeln!(o, "impl {enum_name} {{");
    let _ = write!(
        o,
        "    /// Decodes the body of packet `id`. The other side's packets are\n\
         \x20   /// `Unexpected`, ids outside the protocol `UnknownId`, a body prost\n\
         \x20   /// cannot decode `Decode`.\n\
         \x20   pub fn decode(id: u16, body: &[u8]) -> ::core::result::Result<{enum_name}, {err}> {{\n\
         \x20       match id {{\n"
    );
    for p in packets {
        if p.direction == receives {
            let _ = writeln!(
                o,
                "            {} => ::core::result::Result::Ok({enum_name}::{}(\n\
                 \x20               {sc}::packet::decode_body::<{}>(body)?,\n\
                 \x20           )),",
                p.id, p.rust_name, p.rust_name
            );
        } else {
            let _ = writeln!(
                o,
                "            {} => ::core::result::Result::Err({err}::Unexpected {{\n\
                 \x20               id: {},\n\
                 \x20               name: \"{}\",\n\
                 \x20           }}),",
                p.id, p.id, p.proto_name
            );
        }
    }
    let _ = write!(
        o,
        "            _ => ::core::result::Result::Err({err}::UnknownId(id)),\n\
         \x20       }}\n\
         \x20   }}\n\n"
    );

    let _ = writeln!(
        o,
        "    /// The packet's id.\n    pub fn id(&self) -> PacketId {{\n        match *self {{"
    );
    for p in &mine {
        let _ = writeln!(
            o,
            "            {enum_name}::{}(_) => PacketId::{},",
            p.rust_name, p.rust_name
        );
    }
    o.push_str("        }\n    }\n\n");

    let _ = write!(
        o,
        "    /// Hands the packet to its method of `handler`.\n\
         \x20   pub fn dispatch<Ctx, H>(self, handler: &mut H, session: &Ctx) -> {result}\n\
         \x20   where\n\
         \x20       Ctx: ?Sized,\n\
         \x20       H: {trait_name}<Ctx> + ?Sized,\n\
         \x20   {{\n"
    );
    if mine.is_empty() {
        o.push_str("        let _ = (handler, session);\n");
    }
    o.push_str("        match self {\n");
    for p in &mine {
        let _ = writeln!(
            o,
            "            {enum_name}::{}(msg) => handler.{}(session, msg),",
            p.rust_name, p.method
        );
    }
    o.push_str("        }\n    }\n}\n\n");

    // Handler trait.
    let _ = write!(
        o,
        "/// The {side}'s packet handlers: one method per `{sender}` message, each\n\
         /// taking the session context (by default servercore's `SessionHandle`)\n\
         /// and the decoded message. A method left to its default refuses the\n\
         /// packet with `DispatchError::Unexpected`, which disconnects the peer.\n\
         pub trait {trait_name}<Ctx: ?Sized = {sc}::SessionHandle> {{\n"
    );
    for (i, p) in mine.iter().enumerate() {
        if i > 0 {
            o.push('\n');
        }
        let _ = writeln!(o, "    /// Handles `{}` (id {}).", p.proto_name, p.id);
        if let Some(doc) = &p.doc {
            o.push_str("    ///\n");
            doc_lines(o, "    ", doc);
        }
        let _ = write!(
            o,
            "    fn {}(&mut self, session: &Ctx, msg: {}) -> {result} {{\n\
             \x20       let _ = (session, msg);\n\
             \x20       ::core::result::Result::Err({err}::Unexpected {{\n\
             \x20           id: {},\n\
             \x20           name: \"{}\",\n\
             \x20       }})\n\
             \x20   }}\n",
            p.method, p.rust_name, p.id, p.proto_name
        );
    }
    o.push_str("}\n\n");

    // Dispatch function.
    let _ = write!(
        o,
        "/// Decodes packet `id` and calls its method of `handler`: the one line a\n\
         /// {side}'s `PacketHandler::on_packet` needs.\n\
         pub fn {dispatch}<Ctx, H>(handler: &mut H, session: &Ctx, id: u16, body: &[u8]) -> {result}\n\
         where\n\
         \x20   Ctx: ?Sized,\n\
         \x20   H: {trait_name}<Ctx> + ?Sized,\n\
         {{\n\
         \x20   {enum_name}::decode(id, body)?.dispatch(handler, session)\n\
         }}\n\n"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROTO: &str = r#"
syntax = "proto3";
package demo;

message Player { uint64 id = 1; }

// Asks to log in.
message C_LOGIN { string account = 1; }
message S_LOGIN { bool success = 1; repeated Player players = 2; }
message Internal { uint32 x = 1; }
message C_PING {}
"#;

    fn compile(proto: &str, first_id: u16) -> (tempfile::TempDir, Result<Output, Error>) {
        let dir = tempfile::tempdir().unwrap();
        let proto_path = dir.path().join("demo.proto");
        std::fs::write(&proto_path, proto).unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let result = Generator::new()
            .first_id(first_id)
            .out_dir(&out)
            .emit_rerun_if_changed(false)
            .compile(&[&proto_path], &[dir.path()]);
        (dir, result)
    }

    #[test]
    fn names() {
        assert_eq!(rust_type_name("C_ENTER_GAME"), "CEnterGame");
        assert_eq!(rust_type_name("S_LOGIN"), "SLogin");
        assert_eq!(handler_method_name("C_ENTER_GAME"), "handle_c_enter_game");
        assert_eq!(Direction::of("C_LOGIN"), Some(Direction::ClientToServer));
        assert_eq!(Direction::of("S_CHAT"), Some(Direction::ServerToClient));
        assert_eq!(Direction::of("Player"), None);
        assert_eq!(Direction::of("C_"), None);
        assert_eq!(Direction::of("CS_X"), None);
    }

    #[test]
    fn ids_follow_packet_message_order_and_skip_plain_messages() {
        let (_dir, output) = compile(PROTO, 1000);
        let output = output.unwrap();
        let ids: Vec<(u16, &str)> = output
            .protocol
            .packets
            .iter()
            .map(|p| (p.id, p.proto_name.as_str()))
            .collect();
        assert_eq!(
            ids,
            [(1000, "C_LOGIN"), (1001, "S_LOGIN"), (1002, "C_PING")]
        );
        assert_eq!(output.protocol.package, "demo");
        assert_eq!(
            output.protocol.packets[0].doc.as_deref(),
            Some("Asks to log in.")
        );
        let code = std::fs::read_to_string(&output.packets_file).unwrap();
        assert!(code.contains("CLogin = 1000,"));
        assert!(code.contains("fn handle_c_login(&mut self, session: &Ctx, msg: CLogin)"));
        assert!(code.contains("fn handle_s_login(&mut self, session: &Ctx, msg: SLogin)"));
        assert!(code.contains("pub const SERVER_RECEIVES_IDS: &[u16] = &[1000, 1002];"));
        assert!(!code.contains("Player"), "plain messages are no packets");
        assert!(output.messages_file.ends_with("demo.rs"));
    }

    #[test]
    fn first_id_is_configurable_and_overflow_is_refused() {
        let (_dir, output) = compile(PROTO, 1);
        assert_eq!(output.unwrap().protocol.packets[2].id, 3);
        let (_dir, output) = compile(PROTO, 65534);
        let error = output.unwrap_err().to_string();
        assert!(error.contains("C_PING would get id 65536"), "{error}");
    }

    #[test]
    fn a_bad_proto_is_a_clear_error() {
        let (_dir, output) = compile("syntax = \"proto3\"; message C_X { nope }", 1000);
        let error = output.unwrap_err();
        assert!(matches!(error, Error::Protox(_)), "{error}");
    }

    #[test]
    fn a_side_without_packets_still_renders() {
        let protocol = Protocol {
            package: "p".into(),
            packets: vec![],
        };
        let code = render(&protocol, "::servercore", "p.proto");
        assert!(code.contains("pub enum ServerPacket {\n}"));
        assert!(code.contains("pub fn dispatch_client<Ctx, H>"));
    }
}
