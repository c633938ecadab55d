import ArgumentParser

/// `tessera route build`: routers over an expert library.
struct RouteCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "route",
        abstract: "Build a router over an expert library (Arrow, PhatGOOSE, Glider, uniform, oracle).",
        discussion: """
        A router is a folder: router.json (method, top-k, mixing, the library
        and base it routes, each expert's content hash) and router.safetensors
        (its vectors, a tracked checkpoint). Commit it with the library and the
        base: `tessera eval REV:ROUTER` evaluates that routed checkout.
        Example:
          tessera route build --method arrow --experts experts -o routers/arrow
        """,
        subcommands: [RouteBuildCommand.self]
    )
}
