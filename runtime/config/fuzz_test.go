package config

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// FuzzLoad feeds arbitrary bytes to Load as micro.toml. Load must not panic; a config it
// returns must validate, and loading the same bytes again must give the same config.
func FuzzLoad(f *testing.F) {
	example, err := os.ReadFile(filepath.Join("testdata", "micro.toml"))
	if err != nil {
		f.Fatal(err)
	}
	for _, seed := range []string{
		string(example),
		"",
		"[client]\nstrategy = \"random\"\ntimeout = \"5s\"\n",
		"[client]\ntimeout = 5\nattempts = 2.5\n",
		"[server]\nmax_body = \"4MiB\"\n[server]\n",
		"[services.greeter]\ncommand = [\"app\", 1]\ninstances = -1\n",
		"[[services]]\nname = \"x\"\n",
		"[routes.\"a.b\"]\nweights = { \"1.0.0\" = 9223372036854775807 }\n",
		"[client.retry_budget]\nratio = nan\nmin_per_second = inf\n",
		"client = 1979-05-27T07:32:00Z\n",
		"x = {",
		"[client]\nwrappers = [\"rl\"]\n[wrappers.rl]\nsource = \"s\"\n[wrappers.rl.config]\nrate = 5\nl = [1, { a = 0.5 }, []]\n[[wrappers.rl.config.rules]]\nk = \"v\"\n",
		"[server]\nwrappers = [\"x\", \"x\"]\n[wrappers.x]\npath = \"x.wasm\"\ninstance = 2\nconfig = { when = 1979-05-27, r = nan }\n",
		"[registry]\nplugin = \"consul\"\nsha256 = \"AB\"\ntoken_file = \"t\"\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		l := &Loader{Path: "micro.toml"}
		c, err := l.parse(data)
		if err != nil {
			if c != nil {
				t.Fatalf("config %+v with error %v", c, err)
			}
			return
		}
		if err := Validate(c); err != nil {
			t.Fatalf("Load returned a config that does not validate: %v", err)
		}
		again, err := l.parse(data)
		if err != nil || !reflect.DeepEqual(c, again) {
			t.Fatalf("second load differs: %+v, %v", again, err)
		}
	})
}

// FuzzEnv feeds an arbitrary MICRO_ variable to Load. It must not panic.
func FuzzEnv(f *testing.F) {
	f.Add("CLIENT_STRATEGY", "random")
	f.Add("SERVICES_GREETER_COMMAND", "app --port 0")
	f.Add("ROUTES_GREETER_WEIGHTS", "1.0.0=90,1.1.0=10")
	f.Add("SERVICES__INSTANCES", "1")
	f.Add("SERVER_MAX_BODY", "9999999999GiB")
	f.Add("WRAPPERS_RL_CONFIG_RATE", "5")
	f.Add("WRAPPERS_RL_PATH", "rl.wasm")
	f.Add("CLIENT_WRAPPERS", "a,b")
	f.Fuzz(func(t *testing.T, name, value string) {
		l := &Loader{Env: []string{"MICRO_" + name + "=" + value}}
		c, err := l.parse(nil)
		if err == nil {
			if err := Validate(c); err != nil {
				t.Fatalf("Load returned a config that does not validate: %v", err)
			}
		}
	})
}
