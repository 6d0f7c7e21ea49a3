package main

import "flag"

func renderCommand() command {
	return command{
		name:    "render",
		summary: "render confd resources once, or one template to stdout",
		synopsis: `confsync render [-confdir DIR] [-backend etcd|file|env] [-node URL ...] [flags]
confsync render -template FILE [-prefix P] -key K [-key K ...] [backend flags]`,
		description: `Reads every resource in DIR/conf.d (confd's [template] TOML), fetches the
keys they list with one recursive read per distinct subtree, renders each
template in memory and writes the files that changed: stage file in the
destination's directory, fsync, mode and owner, check_cmd on the stage file,
rename, fsync of the directory, then each distinct reload_cmd once. A file
whose content, mode and owner already match is not touched.

A key listed in a resource that does not exist in etcd is empty, not an
error; the template decides (getv without a default fails, exists guards).

Settings come from defaults < config file (confd.toml keys) < environment
(CONFSYNC_<FLAG> or CONFD_<FLAG>, e.g. CONFSYNC_NODE, CONFD_CLIENT_CAKEYS)
< flags.

With -template, renders one template file for the given -prefix and -key
list to stdout, without conf.d.

Exit status: 0 every resource is fine; 1 a resource failed (fetch, template,
write, check or reload; the others were still processed); 2 usage or
configuration error (bad flag or config file, missing conf.d, or a resource
file that does not load - the resources that did load were processed).`,
		run: runRender,
		flags: func() *flag.FlagSet {
			var r renderFlags
			return renderFlagSet(&r)
		},
	}
}

// extraCommands are the commands other than render; each file that
// implements one adds itself here.
func extraCommands() []command {
	return nil
}
