-- Neovim (0.10 or later): `cardvm lsp` for .cvs and .casm files.
-- Load it with `:luafile editors/cardvm-lsp.lua`, or copy it into your init.lua.
-- `cardvm` must be on PATH (cargo install --path . from the repository).
vim.filetype.add({ extension = { cvs = "cvs", casm = "casm" } })
vim.api.nvim_create_autocmd("FileType", {
  pattern = { "cvs", "casm" },
  callback = function(args)
    vim.lsp.start({
      name = "cardvm",
      cmd = { "cardvm", "lsp" },
      root_dir = vim.fs.root(args.buf, { ".git", "scripts" }) or vim.fn.getcwd(),
    })
  end,
})
